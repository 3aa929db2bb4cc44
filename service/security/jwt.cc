#include "service/security/jwt.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>

#include <cmath>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "memory/session_state.h"

namespace sinkserve::service::security {
namespace {

using google::protobuf::Struct;
using google::protobuf::Value;

enum class Kty { kRsa, kEc };

// Smallest RSA modulus accepted: NIST's floor since 2013.
constexpr int kMinRsaBits = 2048;

absl::Status Bad(std::string_view why) {
  return absl::UnauthenticatedError(
      absl::StrCat("JWT: ", absl::string_view(why.data(), why.size())));
}

bool DecodeB64Url(std::string_view in, std::string* out) {
  // RFC 7515 base64url has no padding; absl also takes it padded, which a
  // JWS may not be.
  if (in.find('=') != std::string_view::npos) return false;
  return absl::WebSafeBase64Unescape(absl::string_view(in.data(), in.size()), out);
}

bool ParseJson(std::string_view text, Struct* out) {
  google::protobuf::util::JsonParseOptions options;
  return google::protobuf::util::JsonStringToMessage(
             google::protobuf::StringPiece(text.data(), text.size()), out, options)
      .ok();
}

const Value* Field(const Struct& s, const char* name) {
  auto it = s.fields().find(name);
  return it == s.fields().end() ? nullptr : &it->second;
}

std::string StringField(const Struct& s, const char* name) {
  const Value* v = Field(s, name);
  return v != nullptr && v->kind_case() == Value::kStringValue ? v->string_value() : "";
}

struct PkeyCtxFree {
  void operator()(EVP_PKEY_CTX* c) const { EVP_PKEY_CTX_free(c); }
};
struct ParamBldFree {
  void operator()(OSSL_PARAM_BLD* b) const { OSSL_PARAM_BLD_free(b); }
};
struct ParamFree {
  void operator()(OSSL_PARAM* p) const { OSSL_PARAM_free(p); }
};
struct BnFree {
  void operator()(BIGNUM* b) const { BN_free(b); }
};
struct MdCtxFree {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};
struct EcdsaSigFree {
  void operator()(ECDSA_SIG* s) const { ECDSA_SIG_free(s); }
};

using Bn = std::unique_ptr<BIGNUM, BnFree>;

Bn BnOf(const std::string& bytes) {
  return Bn(BN_bin2bn(reinterpret_cast<const unsigned char*>(bytes.data()),
                      static_cast<int>(bytes.size()), nullptr));
}

// A public key from OpenSSL parameters, or nullptr.
EVP_PKEY* FromParams(const char* type, OSSL_PARAM_BLD* bld) {
  std::unique_ptr<OSSL_PARAM, ParamFree> params(OSSL_PARAM_BLD_to_param(bld));
  std::unique_ptr<EVP_PKEY_CTX, PkeyCtxFree> ctx(
      EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr));
  EVP_PKEY* pkey = nullptr;
  if (params == nullptr || ctx == nullptr || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &pkey, EVP_PKEY_PUBLIC_KEY, params.get()) != 1) {
    return nullptr;
  }
  return pkey;
}

absl::StatusOr<EVP_PKEY*> RsaKey(const Struct& jwk) {
  std::string n, e;
  if (!DecodeB64Url(StringField(jwk, "n"), &n) || !DecodeB64Url(StringField(jwk, "e"), &e) ||
      n.empty() || e.empty()) {
    return absl::InvalidArgumentError("RSA key without base64url n and e");
  }
  Bn bn_n = BnOf(n), bn_e = BnOf(e);
  if (bn_n == nullptr || bn_e == nullptr || BN_num_bits(bn_n.get()) < kMinRsaBits) {
    return absl::InvalidArgumentError(absl::StrCat(
        "RSA key of ", bn_n ? BN_num_bits(bn_n.get()) : 0, " bits (at least ", kMinRsaBits, ")"));
  }
  std::unique_ptr<OSSL_PARAM_BLD, ParamBldFree> bld(OSSL_PARAM_BLD_new());
  if (bld == nullptr || OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, bn_n.get()) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, bn_e.get()) != 1) {
    return absl::InternalError("OpenSSL parameter build failed");
  }
  EVP_PKEY* pkey = FromParams("RSA", bld.get());
  if (pkey == nullptr) return absl::InvalidArgumentError("OpenSSL refused the RSA key");
  return pkey;
}

absl::StatusOr<EVP_PKEY*> EcKey(const Struct& jwk) {
  if (StringField(jwk, "crv") != "P-256") {
    return absl::InvalidArgumentError("EC key of a curve other than P-256");
  }
  std::string x, y;
  if (!DecodeB64Url(StringField(jwk, "x"), &x) || !DecodeB64Url(StringField(jwk, "y"), &y) ||
      x.size() != 32 || y.size() != 32) {
    return absl::InvalidArgumentError("P-256 key without 32-byte base64url x and y");
  }
  const std::string point = absl::StrCat("\x04", x, y);  // uncompressed
  std::unique_ptr<OSSL_PARAM_BLD, ParamBldFree> bld(OSSL_PARAM_BLD_new());
  if (bld == nullptr ||
      OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) !=
          1 ||
      OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(),
                                       point.size()) != 1) {
    return absl::InternalError("OpenSSL parameter build failed");
  }
  EVP_PKEY* pkey = FromParams("EC", bld.get());
  if (pkey == nullptr) return absl::InvalidArgumentError("the P-256 point is not on the curve");
  return pkey;
}

// JWS ES256 signatures are r || s (32 bytes each); OpenSSL verifies DER.
bool EcdsaDer(const std::string& raw, std::string* der) {
  if (raw.size() != 64) return false;
  std::unique_ptr<ECDSA_SIG, EcdsaSigFree> sig(ECDSA_SIG_new());
  Bn r = BnOf(raw.substr(0, 32)), s = BnOf(raw.substr(32));
  if (sig == nullptr || r == nullptr || s == nullptr ||
      ECDSA_SIG_set0(sig.get(), r.get(), s.get()) != 1) {
    return false;
  }
  r.release();  // owned by sig now
  s.release();
  unsigned char* out = nullptr;
  const int len = i2d_ECDSA_SIG(sig.get(), &out);
  if (len <= 0) return false;
  der->assign(reinterpret_cast<char*>(out), static_cast<size_t>(len));
  OPENSSL_free(out);
  return true;
}

bool VerifySha256(EVP_PKEY* pkey, std::string_view input, const std::string& signature) {
  std::unique_ptr<EVP_MD_CTX, MdCtxFree> md(EVP_MD_CTX_new());
  return md != nullptr &&
         EVP_DigestVerifyInit(md.get(), nullptr, EVP_sha256(), nullptr, pkey) == 1 &&
         EVP_DigestVerify(md.get(), reinterpret_cast<const unsigned char*>(signature.data()),
                          signature.size(), reinterpret_cast<const unsigned char*>(input.data()),
                          input.size()) == 1;
}

bool AudienceMatches(const Value* aud, const std::string& want) {
  if (aud == nullptr) return false;
  if (aud->kind_case() == Value::kStringValue) return aud->string_value() == want;
  if (aud->kind_case() != Value::kListValue) return false;
  for (const Value& v : aud->list_value().values()) {
    if (v.kind_case() == Value::kStringValue && v.string_value() == want) return true;
  }
  return false;
}

// A NumericDate claim (seconds since the epoch), if it is one.
bool NumericDate(const Value* v, absl::Time* out) {
  // Past year 33000 is no date a token carries (and would overflow int64).
  constexpr double kLatest = 1e12;
  if (v == nullptr || v->kind_case() != Value::kNumberValue || !std::isfinite(v->number_value()) ||
      v->number_value() < 0 || v->number_value() > kLatest) {
    return false;
  }
  *out = absl::FromUnixSeconds(static_cast<int64_t>(v->number_value()));
  return true;
}

}  // namespace

struct JwtVerifier::Key {
  std::string kid;
  Kty kty;
  EVP_PKEY* pkey = nullptr;
  ~Key() { EVP_PKEY_free(pkey); }
};

JwtVerifier::JwtVerifier(JwtOptions options) : options_(std::move(options)) {}
JwtVerifier::~JwtVerifier() = default;

absl::StatusOr<std::unique_ptr<JwtVerifier>> JwtVerifier::Create(std::string_view jwks_json,
                                                                 JwtOptions options) {
  if (options.issuer.empty() || options.audience.empty()) {
    return absl::InvalidArgumentError("JWT verification needs an issuer and an audience");
  }
  Struct jwks;
  if (!ParseJson(jwks_json, &jwks)) return absl::InvalidArgumentError("JWKS is not JSON");
  const Value* keys = Field(jwks, "keys");
  if (keys == nullptr || keys->kind_case() != Value::kListValue) {
    return absl::InvalidArgumentError("JWKS has no \"keys\" array");
  }
  auto verifier = std::unique_ptr<JwtVerifier>(new JwtVerifier(std::move(options)));
  int index = 0;
  for (const Value& v : keys->list_value().values()) {
    ++index;
    if (v.kind_case() != Value::kStructValue) {
      return absl::InvalidArgumentError(absl::StrCat("JWKS key ", index, " is not an object"));
    }
    const Struct& jwk = v.struct_value();
    const std::string kty = StringField(jwk, "kty");
    const std::string use = StringField(jwk, "use");
    if ((kty != "RSA" && kty != "EC") || (!use.empty() && use != "sig")) continue;
    absl::StatusOr<EVP_PKEY*> pkey = kty == "RSA" ? RsaKey(jwk) : EcKey(jwk);
    if (!pkey.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("JWKS key ", index, ": ", pkey.status().message()));
    }
    auto key = std::make_unique<Key>();
    key->kid = StringField(jwk, "kid");
    key->kty = kty == "RSA" ? Kty::kRsa : Kty::kEc;
    key->pkey = *pkey;
    verifier->keys_.push_back(std::move(key));
  }
  if (verifier->keys_.empty()) {
    return absl::InvalidArgumentError("JWKS holds no RSA or P-256 signing key");
  }
  return verifier;
}

absl::StatusOr<Caller> JwtVerifier::Verify(std::string_view token, absl::Time now) const {
  if (token.size() > kMaxJwtBytes) return Bad("token too long");
  const size_t dot1 = token.find('.');
  const size_t dot2 = dot1 == std::string_view::npos ? dot1 : token.find('.', dot1 + 1);
  if (dot2 == std::string_view::npos || token.find('.', dot2 + 1) != std::string_view::npos) {
    return Bad("not three dot-separated parts");
  }
  std::string header_json, payload_json, signature;
  if (!DecodeB64Url(token.substr(0, dot1), &header_json) ||
      !DecodeB64Url(token.substr(dot1 + 1, dot2 - dot1 - 1), &payload_json) ||
      !DecodeB64Url(token.substr(dot2 + 1), &signature)) {
    return Bad("a part is not base64url");
  }
  Struct header, claims;
  if (!ParseJson(header_json, &header)) return Bad("header is not a JSON object");
  const std::string alg = StringField(header, "alg");
  if (alg != "RS256" && alg != "ES256") return Bad(absl::StrCat("algorithm '", alg, "' refused"));
  if (Field(header, "crit") != nullptr) return Bad("critical header extensions not supported");
  const Kty kty = alg == "RS256" ? Kty::kRsa : Kty::kEc;
  if (kty == Kty::kEc && !EcdsaDer(signature, &signature)) return Bad("malformed ES256 signature");

  // The signature first: nothing of an unsigned payload is looked at.
  const std::string kid = StringField(header, "kid");
  const std::string_view signing_input = token.substr(0, dot2);
  bool verified = false, candidate = false;
  for (const std::unique_ptr<Key>& key : keys_) {
    if (key->kty != kty || (!kid.empty() && key->kid != kid)) continue;
    candidate = true;
    if (VerifySha256(key->pkey, signing_input, signature)) {
      verified = true;
      break;
    }
  }
  if (!candidate) return Bad(absl::StrCat("no key for kid '", kid, "' and ", alg));
  if (!verified) return Bad("bad signature");

  if (!ParseJson(payload_json, &claims)) return Bad("claims are not a JSON object");
  absl::Time exp, nbf;
  if (!NumericDate(Field(claims, "exp"), &exp)) return Bad("no numeric exp claim");
  if (now > exp + options_.leeway) return Bad("token expired");
  if (Field(claims, "nbf") != nullptr) {
    if (!NumericDate(Field(claims, "nbf"), &nbf)) return Bad("nbf claim is not numeric");
    if (now + options_.leeway < nbf) return Bad("token not valid yet (nbf)");
  }
  if (StringField(claims, "iss") != options_.issuer) return Bad("wrong issuer");
  if (!AudienceMatches(Field(claims, "aud"), options_.audience)) return Bad("wrong audience");
  Caller caller;
  caller.tenant = StringField(claims, options_.tenant_claim.c_str());
  if (!memory::ValidateTenantName(caller.tenant).ok()) {
    return Bad(absl::StrCat("claim '", options_.tenant_claim, "' is no tenant name"));
  }
  if (const std::string role = StringField(claims, "role"); !role.empty()) {
    absl::StatusOr<Role> parsed = ParseRole(role);
    if (!parsed.ok()) return Bad("role claim is neither user nor admin");
    caller.role = *parsed;
  }
  caller.credential = absl::StrCat("jwt:", StringField(claims, "sub"));
  caller.expires = exp + options_.leeway;
  return caller;
}

}  // namespace sinkserve::service::security
