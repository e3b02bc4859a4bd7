"""The throw-away PKI: the serving and admin certificates chain to the CA, with the names and uses
the API server and its clients check."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sessionpipe_kubetest.pki import generate


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_leaf_certificates_are_signed_by_the_ca_for_their_use(tmp_path: Path) -> None:
    pki = generate(tmp_path / "pki")
    ca, serving, admin = load(pki.ca_cert), load(pki.serving_cert), load(pki.admin_cert)
    for leaf in (serving, admin):
        leaf.verify_directly_issued_by(ca)
    names = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "kubernetes.default.svc" in names.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)
    usages = serving.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]
    # RBAC's system:masters group comes from the admin certificate's organization.
    assert [a.value for a in admin.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == ["system:masters"]
    assert list(admin.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert pki.service_account_key.read_bytes().startswith(b"-----BEGIN")
    assert pki.service_account_public_key.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
