"""Makes the TLS material regcred's tests use, into DIR (PEM files):

    ca.crt/ca.key            a test CA
    server.crt/.key          for 127.0.0.1, 127.0.0.2, localhost and tokens.regcred.test
                             (the sealed run's name for 127.0.0.2), signed by the CA
    wronghost.crt/.key       for wrong.example only, signed by the CA
    expired.crt/.key         for 127.0.0.1, expired in 2020, signed by the CA
    client.crt/.key          a client certificate (clientAuth), signed by the CA

Usage: mkcerts.py DIR   (needs the `cryptography` package; moto brings it)
"""
import datetime
import ipaddress
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def key():
    return ec.generate_private_key(ec.SECP256R1())


def write(path, k, cert):
    with open(path + ".key", "wb") as f:
        f.write(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with open(path + ".crt", "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


def name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = key()
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("regcred-test-ca"))
        .issuer_name(name("regcred-test-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    write(os.path.join(out, "ca"), ca_key, ca)

    def leaf(file, cn, sans, usage, not_before, not_after):
        k = key()
        b = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca.subject)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        write(os.path.join(out, file), k, b.sign(ca_key, hashes.SHA256()))

    local = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("127.0.0.2")),
             x509.DNSName("localhost"), x509.DNSName("tokens.regcred.test")]
    day = datetime.timedelta(days=1)
    leaf("server", "127.0.0.1", local, ExtendedKeyUsageOID.SERVER_AUTH, now - day, now + 30 * day)
    leaf("wronghost", "wrong.example", [x509.DNSName("wrong.example")], ExtendedKeyUsageOID.SERVER_AUTH, now - day, now + 30 * day)
    old = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    leaf("expired", "127.0.0.1", local, ExtendedKeyUsageOID.SERVER_AUTH, old, old + day)
    leaf("client", "regcred-client", [], ExtendedKeyUsageOID.CLIENT_AUTH, now - day, now + 30 * day)


if __name__ == "__main__":
    main()
