"""libp2p's TLS for QUIC on qh3: certificates with the libp2p extension, peer ids
from them, and the client certificate that qh3's server never asks for.

libp2p QUIC authenticates both ends (libp2p/specs tls/tls.md): the server must send
a CertificateRequest and verify the client's Certificate and CertificateVerify.
qh3 2.1.0's TLS layer (Python) does client authentication only as a client. Rather
than fork it, ``ClientAuthContext`` subclasses its ``tls.Context``:

* while qh3 builds the server's first flight, ``push_encrypted_extensions`` is
  wrapped for that one synchronous call so a CertificateRequest follows the
  EncryptedExtensions in the same transcript block (RFC 8446 4.3.2: it comes
  right after EncryptedExtensions);
* qh3 precomputes the client's Finished, which is only right without client
  authentication; it skips that when ALPS is negotiated (the client's second
  flight is then not known in advance either), so the wrapper marks the context
  that way and the Finished is checked when it arrives, over a transcript that
  now holds the client's Certificate and CertificateVerify;
* ``handle_message`` takes the client's Certificate and CertificateVerify before
  qh3 sees its Finished, checks the signature with qh3's own primitives and hands
  the certificate to a callback (the libp2p peer-id check), which refuses it by
  raising.

``MeshQuicConnection`` installs this on the server side of each connection, and
works around a qh3 listener failing with "packet builder capacity exhausted" when
the dialer is aioquic (stock py-libp2p) or picoquic: see ``receive_datagram``.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID
from libp2p.transport.quic.security import CertificateGenerator, PeerAuthenticator
from qh3 import tls
from qh3._hazmat import Buffer, verify_with_public_key
from qh3._hazmat import Certificate as X509Certificate
from qh3.quic import connection as qh3_connection
from qh3.quic.configuration import QuicConfiguration
from qh3.quic.connection import NetworkAddress, QuicConnection
from qh3.quic.tls_bridge import QuicTlsBridge

ALPN = "libp2p"

#: Signature schemes a client certificate may use (libp2p: ECDSA P-256 in practice;
#: js-libp2p, rust-libp2p and go-libp2p all make ECDSA P-256 certificates).
CLIENT_SIGNATURE_ALGORITHMS = (
    tls.SignatureAlgorithm.ECDSA_SECP256R1_SHA256,
    tls.SignatureAlgorithm.ECDSA_SECP384R1_SHA384,
    tls.SignatureAlgorithm.ED25519,
    tls.SignatureAlgorithm.RSA_PSS_RSAE_SHA256,
    tls.SignatureAlgorithm.RSA_PKCS1_SHA256,
)

#: Largest client Certificate message accepted (a libp2p certificate is under 1 KiB).
MAX_CLIENT_CERTIFICATE = 16 * 1024

CertificateCheck = Callable[[bytes], None]


class QuicPeerRefused(Exception):
    """The peer's certificate does not prove the libp2p identity it must."""


def libp2p_certificate(keypair: KeyPair) -> tuple[bytes, bytes]:
    """A self-signed certificate carrying the libp2p extension for ``keypair`` (DER),
    and its key (PEM) (libp2p/specs tls.md; py-libp2p's generator)."""
    peer_id = ID.from_pubkey(keypair.public_key)
    made = CertificateGenerator().generate_certificate(
        keypair.private_key, peer_id, validity_days=365
    )
    cert = made.certificate.public_bytes(serialization.Encoding.DER)
    key = made.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert, key


def peer_id_from_certificate(der: bytes, expected: ID | None = None) -> ID:
    """The peer id a libp2p certificate (DER) proves; ``QuicPeerRefused`` if it proves
    none, or not ``expected``."""
    try:
        cert = x509.load_der_x509_certificate(der)
        return PeerAuthenticator().verify_peer_certificate(cert, expected)
    except Exception as exc:
        raise QuicPeerRefused(f"peer certificate refused: {exc}") from None


def quic_configuration(
    cert_der: bytes, key_pem: bytes, *, is_client: bool, max_datagram_size: int
) -> QuicConfiguration:
    """qh3 settings for libp2p QUIC v1: ALPN ``libp2p``, our certificate on both sides,
    no CA checks (the peer id in the certificate is what is verified)."""
    config = QuicConfiguration(
        is_client=is_client,
        alpn_protocols=[ALPN],
        verify_mode=ssl.CERT_NONE,
        verify_hostname=False,
        max_datagram_size=max_datagram_size,
        idle_timeout=30.0,
    )
    # Not load_cert_chain: it splits one PEM bundle with a pattern that some
    # base64 bodies break ("Incorrect padding", about one key in four).
    config.certificate = X509Certificate(cert_der)
    config.private_key = tls.load_pem_private_key(key_pem)
    return config


class ClientAuthContext(tls.Context):
    """A qh3 server TLS context that requires and verifies a client certificate.

    Built by qh3 as a plain ``tls.Context``; ``require_client_certificate`` turns one
    into this class before its first message.
    """

    _client_check: CertificateCheck
    _client_stage: int  # 0 expect Certificate, 1 expect CertificateVerify, 2 done
    _client_cert: X509Certificate | None

    @classmethod
    def require_client_certificate(cls, context: tls.Context, check: CertificateCheck) -> None:
        if context.state != tls.State.SERVER_EXPECT_CLIENT_HELLO:
            raise ValueError(
                "client authentication is requested by a server, before its first message"
            )
        context.__class__ = cls
        assert isinstance(context, cls)
        context._client_check = check
        context._client_stage = 0
        context._client_cert = None

    def _server_handle_hello(
        self, input_buf: Buffer, initial_buf: Buffer, handshake_buf: Buffer, onertt_buf: Buffer
    ) -> None:
        with _certificate_request_after_encrypted_extensions(self):
            super()._server_handle_hello(input_buf, initial_buf, handshake_buf, onertt_buf)

    def handle_message(
        self, input_data: bytes, output_buf: dict[tls.Epoch, Buffer], epoch: int = -1
    ) -> None:
        if self.state != tls.State.SERVER_EXPECT_FINISHED or self._client_stage >= 2:
            super().handle_message(input_data, output_buf, epoch)
            return
        if epoch >= 0 and epoch != tls.Epoch.HANDSHAKE:
            raise tls.AlertUnexpectedMessage("client certificate outside the handshake epoch")
        self._receive_buffer += input_data
        while self._client_stage < 2 and len(self._receive_buffer) >= 4:
            length = 4 + int.from_bytes(self._receive_buffer[1:4], "big")
            if length > MAX_CLIENT_CERTIFICATE:
                raise tls.AlertBadCertificate("client certificate message too large")
            if len(self._receive_buffer) < length:
                return
            message = bytes(self._receive_buffer[:length])
            self._receive_buffer = self._receive_buffer[length:]
            self._client_message(message)
        # Anything left (the client's Finished) goes the usual way.
        super().handle_message(b"", output_buf, epoch)

    def _client_message(self, message: bytes) -> None:
        kind = message[0]
        buf = Buffer(data=message)
        if self._client_stage == 0:
            if kind != tls.HandshakeType.CERTIFICATE:
                raise tls.AlertUnexpectedMessage("libp2p needs a client certificate")
            certificate = tls.pull_certificate(buf)
            if not certificate.certificates:
                raise tls.AlertBadCertificate("the client sent no certificate")
            der = certificate.certificates[0][0]
            try:
                self._client_check(der)
            except Exception as exc:
                raise tls.AlertBadCertificate(str(exc)) from None
            self._client_cert = X509Certificate(der)
            self._peer_certificate = self._client_cert
            self._client_stage = 1
        else:
            if kind != tls.HandshakeType.CERTIFICATE_VERIFY:
                raise tls.AlertUnexpectedMessage("expected the client's CertificateVerify")
            verify = tls.pull_certificate_verify(buf)
            if verify.algorithm not in CLIENT_SIGNATURE_ALGORITHMS:
                raise tls.AlertDecryptError("client signed with a scheme we did not offer")
            assert self._client_cert is not None and self.key_schedule is not None
            try:
                verify_with_public_key(
                    self._client_cert.public_key(),
                    verify.algorithm,
                    self.key_schedule.certificate_verify_data(b"TLS 1.3, client CertificateVerify"),
                    verify.signature,
                )
            except Exception as exc:
                raise tls.AlertDecryptError(f"client CertificateVerify: {exc}") from None
            self._client_stage = 2
        if not buf.eof():
            raise tls.AlertDecodeError("extra bytes at the end of a handshake message")
        assert self.key_schedule is not None
        self.key_schedule.update_hash(message)

    def _server_handle_finished(self, input_buf: Buffer, output_buf: Buffer) -> None:
        if self._client_stage < 2:
            raise tls.AlertUnexpectedMessage("Finished before the client's certificate")
        super()._server_handle_finished(input_buf, output_buf)
        # The ALPS mark only served to stop qh3 from precomputing this Finished.
        self._alps_negotiated = False


def push_certificate_request(buf: Buffer) -> None:
    """A TLS 1.3 CertificateRequest: empty context, our signature schemes."""
    buf.push_uint8(tls.HandshakeType.CERTIFICATE_REQUEST)
    with tls.push_block(buf, 3):
        tls.push_opaque(buf, 1, b"")
        with tls.push_block(buf, 2):
            with tls.push_extension(buf, tls.ExtensionType.SIGNATURE_ALGORITHMS):
                tls.push_list(buf, 2, buf.push_uint16, list(CLIENT_SIGNATURE_ALGORITHMS))


@contextmanager
def _certificate_request_after_encrypted_extensions(context: ClientAuthContext) -> Iterator[None]:
    original = tls.push_encrypted_extensions

    def push_then_request(buf: Buffer, extensions: Any) -> None:
        original(buf, extensions)
        push_certificate_request(buf)
        # Stops qh3 anticipating the client's Finished (see the module docstring);
        # only checked again in _server_handle_finished, where it is cleared.
        context._alps_negotiated = True

    tls.push_encrypted_extensions = push_then_request
    try:
        yield
    finally:
        tls.push_encrypted_extensions = original


#: qh3.quic.connection's name for the header parser its receive_datagram splits with.
_PULL_HEADER = "_pull_quic_header"


@contextmanager
def _padding_kept_with_last_packet() -> Iterator[None]:
    original = getattr(qh3_connection, _PULL_HEADER)

    def pull(data: bytes, offset: int, cid_length: int | None) -> Any:
        header = original(data, offset, cid_length)
        end = header[9]
        if offset < end < len(data) and not any(memoryview(data)[end:]):
            return (*header[:9], len(data), *header[10:])
        return header

    setattr(qh3_connection, _PULL_HEADER, pull)
    try:
        yield
    finally:
        setattr(qh3_connection, _PULL_HEADER, original)


class MeshQuicConnection(QuicConnection):
    """A qh3 connection whose server side demands a libp2p client certificate."""

    def __init__(self, *, client_check: CertificateCheck | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._client_check = client_check

    def receive_datagram(self, data: bytes, addr: NetworkAddress, now: float) -> None:
        """qh3's, but zero padding after the last packet counts as part of that packet.

        aioquic and picoquic pad a client's Initial datagram to 1200 bytes with zeros
        after the packet (RFC 9000 14.1 allows it), not with PADDING frames inside it.
        qh3 hands each packet of a datagram to its core separately, so the padding
        arrives as an undecryptable "packet" and is dropped, and the core credits only
        the ~500-byte Initial to the server's anti-amplification budget (3x what it
        received); the server's first flight does not fit, and qh3 raises "packet
        builder capacity exhausted" instead of waiting. Handing the padding over with
        the packet credits the whole datagram, as RFC 9000 8.1 counts it.
        """
        if self._handshake_complete or not data or data[-1] != 0:
            super().receive_datagram(data, addr, now)
            return
        with _padding_kept_with_last_packet():
            super().receive_datagram(data, addr, now)

    def _create_tls(self, remote_source_cid: bytes | None) -> QuicTlsBridge:
        bridge = super()._create_tls(remote_source_cid)
        if not self._is_client:
            check = self._client_check or (lambda der: None)
            ClientAuthContext.require_client_certificate(bridge.tls, check)
        return bridge


__all__ = [
    "ALPN",
    "ClientAuthContext",
    "MeshQuicConnection",
    "QuicPeerRefused",
    "libp2p_certificate",
    "peer_id_from_certificate",
    "quic_configuration",
]
