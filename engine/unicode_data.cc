// Placeholder: implemented in a following commit.
namespace sinkserve::engine {}
