#include "runtime/tls.hpp"

#include "backends/common/error.hpp"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

#include <fstream>
#include <memory>
#include <sstream>

namespace anvil::runtime {
namespace {

std::string read_pem(const std::string& path, const char* flag) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{} {}: cannot read the file", flag, path);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  if (text.find("-----BEGIN ") == std::string::npos)
    fail("{} {}: not a PEM file (no -----BEGIN line)", flag, path);
  return text;
}

std::string openssl_error() {
  unsigned long e = ERR_get_error();
  if (e == 0) return "unknown OpenSSL error";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof(buf));
  ERR_clear_error();
  return buf;
}

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct KeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct StoreFree {
  void operator()(X509_STORE* s) const { X509_STORE_free(s); }
};
struct StoreCtxFree {
  void operator()(X509_STORE_CTX* s) const { X509_STORE_CTX_free(s); }
};

std::unique_ptr<BIO, BioFree> bio_of(const std::string& text) {
  return std::unique_ptr<BIO, BioFree>(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
}

TlsConfig& storage() {
  static TlsConfig config;
  return config;
}

}  // namespace

TlsConfig load_tls(const std::string& cert_file, const std::string& key_file,
                   const std::string& ca_file) {
  TlsConfig c;
  int given = !cert_file.empty() + !key_file.empty() + !ca_file.empty();
  if (given == 0) return c;
  if (given != 3)
    fail(
        "TLS needs all of --tls-cert, --tls-key and --tls-ca (got --tls-cert '{}', --tls-key "
        "'{}', --tls-ca '{}')",
        cert_file, key_file, ca_file);
  c.cert_file = cert_file;
  c.key_file = key_file;
  c.ca_file = ca_file;
  c.cert_pem = read_pem(cert_file, "--tls-cert");
  c.key_pem = read_pem(key_file, "--tls-key");
  c.ca_pem = read_pem(ca_file, "--tls-ca");
  ERR_clear_error();
  auto cb = bio_of(c.cert_pem);
  std::unique_ptr<X509, X509Free> cert(PEM_read_bio_X509(cb.get(), nullptr, nullptr, nullptr));
  if (!cert) fail("--tls-cert {}: not a PEM certificate: {}", cert_file, openssl_error());
  auto kb = bio_of(c.key_pem);
  std::unique_ptr<EVP_PKEY, KeyFree> key(
      PEM_read_bio_PrivateKey(kb.get(), nullptr, nullptr, nullptr));
  if (!key) fail("--tls-key {}: not an unencrypted PEM private key: {}", key_file, openssl_error());
  if (X509_check_private_key(cert.get(), key.get()) != 1)
    fail("--tls-key {}: does not belong to the certificate --tls-cert {}", key_file, cert_file);
  std::unique_ptr<X509_STORE, StoreFree> store(X509_STORE_new());
  auto ab = bio_of(c.ca_pem);
  int cas = 0;
  while (X509* ca = PEM_read_bio_X509(ab.get(), nullptr, nullptr, nullptr)) {
    X509_STORE_add_cert(store.get(), ca);
    X509_free(ca);
    ++cas;
  }
  ERR_clear_error();
  if (cas == 0) fail("--tls-ca {}: holds no PEM certificate", ca_file);
  std::unique_ptr<X509_STORE_CTX, StoreCtxFree> ctx(X509_STORE_CTX_new());
  X509_STORE_CTX_init(ctx.get(), store.get(), cert.get(), nullptr);
  if (X509_verify_cert(ctx.get()) != 1) {
    fail("--tls-cert {}: does not verify against --tls-ca {}: {}", cert_file, ca_file,
         X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx.get())));
  }
  return c;
}

void set_process_tls(const TlsConfig& config) { storage() = config; }

const TlsConfig& process_tls() { return storage(); }

}  // namespace anvil::runtime
