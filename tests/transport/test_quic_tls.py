"""libp2p's mutual TLS on qh3: both ends prove their peer id, or there is no connection."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from qh3._hazmat import pull_quic_header
from qh3.quic import events

from meshp2p.transport._quic_tls import (
    MeshQuicConnection,
    QuicPeerRefused,
    libp2p_certificate,
    peer_id_from_certificate,
    quic_configuration,
)

CLIENT = ("127.0.0.1", 40000)
SERVER = ("127.0.0.1", 40001)


def _plain_certificate() -> tuple[bytes, bytes]:
    """A self-signed certificate without the libp2p extension."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not-libp2p")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.DER), pem


def _handshake(
    client_cert: tuple[bytes, bytes], server_cert: tuple[bytes, bytes]
) -> tuple[MeshQuicConnection, MeshQuicConnection, list[ID], list[type]]:
    """Run a handshake by handing datagrams across in memory."""
    seen: list[ID] = []
    client = MeshQuicConnection(
        configuration=quic_configuration(*client_cert, is_client=True, max_datagram_size=1452)
    )
    now = 1000.0
    client.connect(SERVER, now)
    server: MeshQuicConnection | None = None
    for _ in range(8):
        for data, _addr in client.datagrams_to_send(now):
            if server is None:
                server = MeshQuicConnection(
                    configuration=quic_configuration(
                        *server_cert, is_client=False, max_datagram_size=1452
                    ),
                    original_destination_connection_id=pull_quic_header(data, 0, 8)[3],
                    client_check=lambda der: seen.append(peer_id_from_certificate(der)),
                )
            server.receive_datagram(data, CLIENT, now)
        assert server is not None
        for data, _addr in server.datagrams_to_send(now):
            client.receive_datagram(data, SERVER, now)
        now += 0.001
    assert server is not None
    server_events = []
    while (event := server.next_event()) is not None:
        server_events.append(type(event))
    return client, server, seen, server_events


def test_both_ends_prove_their_peer_id() -> None:
    client_keys, server_keys = create_new_key_pair(), create_new_key_pair()
    client, server, seen, server_events = _handshake(
        libp2p_certificate(client_keys), libp2p_certificate(server_keys)
    )
    assert events.HandshakeCompleted in server_events
    assert seen == [ID.from_pubkey(client_keys.public_key)]
    cert = client.get_peercert()
    assert cert is not None
    assert peer_id_from_certificate(cert.public_bytes()) == ID.from_pubkey(server_keys.public_key)
    assert server.get_peercert() is not None


def test_a_client_without_a_libp2p_certificate_is_refused() -> None:
    client, _server, seen, server_events = _handshake(
        _plain_certificate(), libp2p_certificate(create_new_key_pair())
    )
    assert seen == []
    assert events.HandshakeCompleted not in server_events
    client.handle_timer(2000.0)  # past the draining period: the close is reported
    closes = []
    while (event := client.next_event()) is not None:
        if isinstance(event, events.ConnectionTerminated):
            closes.append(event)
    # TLS bad_certificate (42) as a QUIC CRYPTO_ERROR, with the reason.
    assert [c.error_code for c in closes] == [0x100 + 42]
    assert "libp2p extension" in closes[0].reason_phrase


def test_a_certificate_for_another_peer_is_refused() -> None:
    cert, _key = libp2p_certificate(create_new_key_pair())
    other = ID.from_pubkey(create_new_key_pair().public_key)
    with pytest.raises(QuicPeerRefused, match="mismatch"):
        peer_id_from_certificate(cert, other)
    with pytest.raises(QuicPeerRefused):
        peer_id_from_certificate(b"not a certificate")


def test_an_aioquic_dialer_that_pads_after_its_initial_gets_a_handshake() -> None:
    """aioquic (stock py-libp2p) pads its Initial datagram with zeros after the packet.

    qh3 credited only the packet to the server's anti-amplification budget and failed
    its first flight with "packet builder capacity exhausted"; MeshQuicConnection
    credits the whole datagram.
    """
    import ssl

    from aioquic.quic.configuration import QuicConfiguration as AioquicConfiguration
    from aioquic.quic.connection import QuicConnection as AioquicConnection

    client_keys = create_new_key_pair()
    cert_der, key_pem = libp2p_certificate(client_keys)
    config = AioquicConfiguration(
        is_client=True, alpn_protocols=["libp2p"], verify_mode=ssl.CERT_NONE
    )
    config.certificate = x509.load_der_x509_certificate(cert_der)
    config.private_key = serialization.load_pem_private_key(key_pem, None)  # type: ignore[assignment]
    client = AioquicConnection(configuration=config)
    now = 1000.0
    client.connect(SERVER, now)
    server: MeshQuicConnection | None = None
    seen: list[ID] = []
    padded = False
    for _ in range(8):
        for data, _addr in client.datagrams_to_send(now):
            header = pull_quic_header(data, 0, 8)
            padded = padded or (header[9] < len(data) and not any(data[header[9] :]))
            if server is None:
                server = MeshQuicConnection(
                    configuration=quic_configuration(
                        *libp2p_certificate(create_new_key_pair()),
                        is_client=False,
                        max_datagram_size=1452,
                    ),
                    original_destination_connection_id=header[3],
                    client_check=lambda der: seen.append(peer_id_from_certificate(der)),
                )
            server.receive_datagram(data, CLIENT, now)
        assert server is not None
        for data, _addr in server.datagrams_to_send(now):
            client.receive_datagram(data, SERVER, now)
        now += 0.001
    assert padded, "aioquic no longer pads after the packet: this test tests nothing"
    assert server is not None
    kinds = []
    while (event := server.next_event()) is not None:
        kinds.append(type(event))
    assert events.HandshakeCompleted in kinds
    assert seen == [ID.from_pubkey(client_keys.public_key)]
