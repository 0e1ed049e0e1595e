"""``fmc opcua cert``; ``fmc opcua browse`` lives in ``browse.py`` (its names are re-exported here).

``make_client_certificate`` makes the client's application instance certificate: self-signed,
RSA 2048, SHA-256, with the application URI the client announces in its SubjectAltName (a
mismatch is the classic BadCertificateUriInvalid), plus this host's name, and the key usages
OPC UA servers check (digitalSignature, nonRepudiation, keyEncipherment, dataEncipherment, and
keyCertSign with cA=TRUE because it is self-signed; extendedKeyUsage clientAuth). The
certificate is written as DER (what OPC UA servers exchange and import), the key as PEM (PKCS#8).
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fmc.sources.opcua.browse import (  # noqa: F401 - the browse's names, where they were before browse.py
    BrowseReport,
    FoundMachine,
    FoundMeter,
    FoundSignal,
    alias_namespaces,
    browse_machines,
    equipment_id,
    find_machines,
)

KEY_BITS = 2048


# --- fmc opcua cert ---------------------------------------------------------------------------------


def make_client_certificate(
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    application_uri: str,
    common_name: str,
    days: int = 3650,
    *,
    hostname: str | None = None,
    organization: str | None = None,
) -> tuple[Path, Path]:
    """Write a self-signed OPC UA client certificate (DER) and its private key (PEM); return the paths.

    The key file is created readable by its owner only. Existing files are replaced.
    """
    if days < 1:
        raise ValueError("days must be at least 1")
    application_uri = application_uri.replace("{hostname}", socket.gethostname())
    host = hostname or socket.gethostname()
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    name = x509.Name(attributes)
    now = dt.datetime.now(dt.UTC)
    public_key = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        # a little in the past: a server whose clock is slightly behind must not see a future certificate
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(application_uri), x509.DNSName(host)]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=True, key_encipherment=True, data_encipherment=True,
                key_agreement=False, key_cert_sign=True, crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False)
    )
    certificate = builder.sign(key, hashes.SHA256())
    cert_file, key_file = Path(cert_path), Path(key_path)
    cert_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    _write_private(key_file, key_pem)
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.DER))
    return cert_file, key_file


def _write_private(path: Path, data: bytes) -> None:
    # created 0600 from the start rather than chmod afterwards: no moment when others may read it
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)
