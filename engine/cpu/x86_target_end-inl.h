// Closes the region x86_target_begin-inl.h opened.
#if SINKSERVE_X86_KERNELS
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
#undef SINKSERVE_X86_KERNELS
#undef SINKSERVE_X86_TARGET
