"""Certificates for TLS tests and benchmarks, made with the openssl CLI into a directory:
a CA, server certificates for 127.0.0.1/localhost (with SAN), client certificates whose
CN is a device id, expired and untrusted ones. Keys are ECDSA P-256 unless rsa=True."""
import os
import subprocess


def _run(*args):
    subprocess.run(["openssl"] + list(args), check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=60)


def _key(path, rsa):
    if rsa:
        _run("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", path)
    else:
        _run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)


class CA:
    """A certificate authority in dir/<name>.pem with its key dir/<name>.key."""

    def __init__(self, d, name="ca", rsa=False):
        self.dir, self.name = d, name
        self.pem = os.path.join(d, name + ".pem")
        self.key = os.path.join(d, name + ".key")
        _key(self.key, rsa)
        _run("req", "-x509", "-new", "-key", self.key, "-out", self.pem, "-days", "30",
             "-subj", "/CN=Gale test CA " + name)

    def issue(self, name, cn, server=False, days=30, rsa=False, serial=None):
        """Signs a certificate for cn; returns (cert_path, key_path). server: SAN for
        localhost and 127.0.0.1. days < 0: already expired."""
        key = os.path.join(self.dir, name + ".key")
        csr = os.path.join(self.dir, name + ".csr")
        pem = os.path.join(self.dir, name + ".pem")
        ext = os.path.join(self.dir, name + ".ext")
        _key(key, rsa)
        _run("req", "-new", "-key", key, "-out", csr, "-subj", "/CN=" + cn)
        with open(ext, "w") as f:
            if server:
                f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                        "extendedKeyUsage=serverAuth\n")
            else:
                f.write("extendedKeyUsage=clientAuth\n")
        _run("x509", "-req", "-in", csr, "-CA", self.pem, "-CAkey", self.key, "-out", pem,
             "-days", str(days), "-extfile", ext,
             "-set_serial", str(serial if serial is not None else int.from_bytes(os.urandom(8), "big")))
        return pem, key


def serial_of(pem_bytes_or_der):
    """The serial number of a certificate (PEM text or DER bytes), as an int."""
    der = pem_bytes_or_der
    inform = "DER" if isinstance(der, bytes) and not der.startswith(b"-----") else "PEM"
    out = subprocess.run(["openssl", "x509", "-inform", inform, "-noout", "-serial"],
                         input=der if isinstance(der, bytes) else der.encode(),
                         capture_output=True, check=True, timeout=30).stdout.decode()
    return int(out.strip().split("=", 1)[1], 16)
