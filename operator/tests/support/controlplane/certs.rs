//! The control plane's keys and certificates, made with the `openssl` command: one CA that
//! signs the API server's serving certificate and the client certificates of the admin and
//! the controller manager, and the key pair that signs service account tokens.

use std::{path::Path, process::Command};

/// A client certificate and its key, PEM files.
#[derive(Debug, Clone)]
pub struct ClientCert {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// Everything `dir` holds after [`make`].
#[derive(Debug, Clone)]
pub struct Certs {
    pub ca: std::path::PathBuf,
    pub ca_key: std::path::PathBuf,
    pub serving: ClientCert,
    pub admin: ClientCert,
    pub controller_manager: ClientCert,
    pub service_account_key: std::path::PathBuf,
    pub service_account_pub: std::path::PathBuf,
}

/// Runs `openssl` in `dir`; panics with its output when it fails.
pub fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command (Debian package openssl)");
    assert!(
        output.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn key(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            name,
        ],
    );
}

/// A certificate for `subject`, signed by the CA, with `extensions` (an openssl
/// extension section's lines).
fn signed(dir: &Path, name: &str, subject: &str, extensions: &str) -> ClientCert {
    let (key_file, csr, cert, ext) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
        format!("{name}.ext"),
    );
    key(dir, &key_file);
    openssl(
        dir,
        &[
            "req", "-new", "-key", &key_file, "-subj", subject, "-out", &csr,
        ],
    );
    std::fs::write(dir.join(&ext), extensions).expect("extension file");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            &ext,
            "-out",
            &cert,
        ],
    );
    ClientCert {
        cert: dir.join(cert),
        key: dir.join(key_file),
    }
}

/// Makes the CA, the certificates and the service account key pair in `dir`.
pub fn make(dir: &Path) -> Certs {
    key(dir, "ca.key");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-subj",
            "/CN=pgbackup-test-ca",
            "-days",
            "30",
            "-out",
            "ca.crt",
        ],
    );
    let client =
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n";
    let serving = signed(
        dir,
        "apiserver",
        "/CN=kube-apiserver",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\n\
         subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,\
         DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n",
    );
    let admin = signed(
        dir,
        "admin",
        "/O=system:masters/CN=pgbackup-test-admin",
        client,
    );
    let controller_manager = signed(
        dir,
        "controller-manager",
        "/CN=system:kube-controller-manager",
        client,
    );
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "service-account.key",
        ],
    );
    openssl(
        dir,
        &[
            "pkey",
            "-in",
            "service-account.key",
            "-pubout",
            "-out",
            "service-account.pub",
        ],
    );
    Certs {
        ca: dir.join("ca.crt"),
        ca_key: dir.join("ca.key"),
        serving,
        admin,
        controller_manager,
        service_account_key: dir.join("service-account.key"),
        service_account_pub: dir.join("service-account.pub"),
    }
}
