"""libp2p Noise (``/noise``, Noise_XX_25519_ChaChaPoly_SHA256) with a fast transport phase.

The handshake is py-libp2p's own (``libp2p.security.noise.transport.Transport``): the XX
pattern, the signed identity payload and its checks run unchanged, so interop with
go-libp2p and js-libp2p is whatever py-libp2p's is. What changes is the session it
returns: py-libp2p moves every transport message through four layers (SecureSession,
NoiseTransportReadWriter, msgio, RawConnection/TrioTCPStream with their locks), each a few
Python calls and copies per message. ``NoiseSession`` takes the two cipher states' keys and
nonces once the handshake is done and then, per the libp2p noise spec:

- a message is a 2-byte big-endian length and a ChaCha20-Poly1305 ciphertext of at most
  65535 bytes (so at most 65519 bytes of plaintext), nonce = 4 zero bytes + the 8-byte
  little-endian message counter, no associated data;
- one ``ChaCha20Poly1305`` object per direction;
- a write of N bytes is ceil(N / 65519) messages sent with one socket write;
- reads take up to 256 KiB from the socket at once and decrypt every whole message in it.

A ciphertext that fails authentication raises ``NoiseDecryptError`` and the session is
unusable from then on (the nonce sequence cannot resynchronise).
"""

from __future__ import annotations

import logging
import socket
import struct
from typing import Any

import multiaddr
import trio
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from libp2p.abc import IRawConnection, ISecureConn
from libp2p.connection_types import ConnectionType
from libp2p.crypto.keys import KeyPair, PrivateKey, PublicKey
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.io.exceptions import ConnectionClosedError, IOException
from libp2p.peer.id import ID
from libp2p.security.noise.early_data import EarlyDataHandler
from libp2p.security.noise.io import NoiseTransportReadWriter
from libp2p.security.noise.rekey import RekeyPolicy
from libp2p.security.noise.transport import Transport as StockNoiseTransport
from libp2p.security.secure_session import SecureSession

logger = logging.getLogger(__name__)

PROTOCOL_ID = TProtocol("/noise")

#: Largest Noise transport message (ciphertext incl. the 16-byte tag), spec.
MAX_MESSAGE = 65535
TAG_SIZE = 16
#: Largest plaintext per message (go-libp2p's MaxPlaintextLength).
MAX_PLAINTEXT = MAX_MESSAGE - TAG_SIZE
#: The counter value 2**64 - 1 is reserved (Noise spec 5.1).
_MAX_NONCE = (1 << 64) - 1
_RECV_SIZE = 256 * 1024

_NONCE = struct.Struct("<4xQ")
_LENGTH = struct.Struct(">H")


class NoiseDecryptError(IOException):
    """A transport message failed authentication: tampered, corrupted or out of order."""


class NoiseSession(ISecureConn):
    """A secured connection after the Noise handshake: ``read``/``write`` plaintext."""

    def __init__(
        self,
        *,
        conn: IRawConnection,
        local_peer: ID,
        local_private_key: PrivateKey,
        remote_peer: ID,
        remote_permanent_pubkey: PublicKey,
        is_initiator: bool,
        send_key: bytes,
        send_nonce: int,
        recv_key: bytes,
        recv_nonce: int,
    ) -> None:
        self.conn = conn
        self.local_peer = local_peer
        self.local_private_key = local_private_key
        self.remote_peer = remote_peer
        # As py-libp2p's SecureSession: the remote's Noise static (X25519) key.
        self.remote_permanent_pubkey = remote_permanent_pubkey
        self.is_initiator = is_initiator
        self._encrypt = ChaCha20Poly1305(send_key).encrypt
        self._decrypt = ChaCha20Poly1305(recv_key).decrypt
        self._send_nonce = send_nonce
        self._recv_nonce = recv_nonce
        # Ciphertext received, not yet decrypted (``_raw_pos`` bytes of it consumed).
        self._raw = bytearray()
        self._raw_pos = 0
        # Plaintext decrypted, not yet read (``_plain_pos`` bytes of it read).
        self._plain = b""
        self._plain_pos = 0
        self._error: Exception | None = None
        self._writing = False
        self._write_lot = trio.lowlevel.ParkingLot()
        # Straight to the OS socket when the raw connection is py-libp2p's TCP one.
        self._sock = _os_socket(conn)
        self._streak = 0  # socket calls in a row that did not block
        self._drained = False  # the last recv got less than asked: the socket is empty

    # -- ISecureConn -------------------------------------------------------------------

    def get_local_peer(self) -> ID:
        return self.local_peer

    def get_local_private_key(self) -> PrivateKey:
        return self.local_private_key

    def get_remote_peer(self) -> ID:
        return self.remote_peer

    def get_remote_public_key(self) -> PublicKey:
        return self.remote_permanent_pubkey

    def get_remote_address(self) -> tuple[str, int] | None:
        return self.conn.get_remote_address()

    def get_transport_addresses(self) -> list[multiaddr.Multiaddr]:
        return self.conn.get_transport_addresses()

    def get_connection_type(self) -> ConnectionType:
        return self.conn.get_connection_type()

    async def close(self) -> None:
        await self.conn.close()

    # -- writing -----------------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        """Encrypt ``data`` as ceil(len / 65519) messages and send them in one write."""
        if not data:
            await trio.lowlevel.checkpoint()
            return
        # Messages must go out in nonce order: encrypt and send under one gate.
        if self._writing:
            await self._write_lot.park()  # woken owning the gate
        else:
            self._writing = True
        try:
            await self._send_raw(self._seal(data))
        finally:
            if self._write_lot:
                self._write_lot.unpark()
            else:
                self._writing = False

    def _seal(self, data: bytes) -> bytes:
        total = len(data)
        count = -(-total // MAX_PLAINTEXT)
        nonce = self._send_nonce
        if nonce + count > _MAX_NONCE:
            raise IOException("noise: send nonce exhausted; the connection must be replaced")
        self._send_nonce = nonce + count
        encrypt = self._encrypt
        pack_nonce = _NONCE.pack
        if count == 1:
            sealed = encrypt(pack_nonce(nonce), data, None)
            return _LENGTH.pack(len(sealed)) + sealed
        view = memoryview(data)
        parts: list[bytes] = []
        for offset in range(0, total, MAX_PLAINTEXT):
            sealed = encrypt(pack_nonce(nonce), view[offset : offset + MAX_PLAINTEXT], None)
            nonce += 1
            parts.append(_LENGTH.pack(len(sealed)))
            parts.append(sealed)
        return b"".join(parts)

    async def _send_raw(self, data: bytes) -> None:
        sock = self._sock
        if sock is None:
            await self.conn.write(data)
            return
        await trio.lowlevel.checkpoint_if_cancelled()
        total = len(data)
        try:
            try:
                sent = sock.send(data)
            except BlockingIOError:
                sent = 0
            if sent == total:
                await self._maybe_yield()
                return
            self._streak = 0
            view = memoryview(data)
            while sent < total:
                await trio.lowlevel.wait_writable(sock)
                try:
                    sent += sock.send(view[sent:])
                except BlockingIOError:
                    pass
        except (OSError, trio.ClosedResourceError) as exc:
            raise ConnectionClosedError(
                f"noise: connection closed: {exc}", transport="tcp"
            ) from exc

    async def _maybe_yield(self) -> None:
        # trio yields to the scheduler after every socket call that did not block; that
        # costs as much as the call. Yield after every 8th in a row instead, so a busy
        # connection still lets other tasks run.
        self._streak += 1
        if self._streak >= 8:
            self._streak = 0
            await trio.lowlevel.cancel_shielded_checkpoint()

    # -- reading -----------------------------------------------------------------------

    async def read(self, n: int | None = None) -> bytes:
        """Up to ``n`` bytes of plaintext (all decrypted ones if ``n`` is None).

        Waits for at least one byte. At the end of the connection raises
        ``ConnectionClosedError``, as py-libp2p's SecureSession does.
        """
        if n == 0:
            return b""
        plain = self._plain
        pos = self._plain_pos
        if pos == len(plain):
            plain = await self._fill()
            pos = 0
        avail = len(plain) - pos
        if n is None or n < 0 or n >= avail:
            self._plain = b""
            self._plain_pos = 0
            return plain[pos:] if pos else plain
        self._plain = plain
        self._plain_pos = pos + n
        return plain[pos : pos + n]

    async def _fill(self) -> bytes:
        """Plaintext of every whole message available, waiting until there is some."""
        if self._error is not None:
            raise self._error
        raw = self._raw
        pos = self._raw_pos
        decrypt = self._decrypt
        pack_nonce = _NONCE.pack
        out: list[bytes] = []
        try:
            while True:
                have = len(raw)
                while have - pos >= 2:
                    size = (raw[pos] << 8) | raw[pos + 1]
                    end = pos + 2 + size
                    if end > have:
                        break
                    if size < TAG_SIZE:
                        raise NoiseDecryptError(
                            f"noise: message {self._recv_nonce} is {size} bytes, shorter "
                            "than its authentication tag"
                        )
                    try:
                        plain = decrypt(
                            pack_nonce(self._recv_nonce), memoryview(raw)[pos + 2 : end], None
                        )
                    except InvalidTag:
                        raise NoiseDecryptError(
                            f"noise: message {self._recv_nonce} failed authentication "
                            "(tampered or corrupted ciphertext); the connection is unusable"
                        ) from None
                    self._recv_nonce += 1
                    pos = end
                    if plain:
                        out.append(plain)
                if pos == have:
                    raw.clear()
                    pos = 0
                elif pos >= _RECV_SIZE:
                    del raw[:pos]
                    pos = 0
                if out:
                    self._raw_pos = pos
                    return out[0] if len(out) == 1 else b"".join(out)
                data = await self._recv_raw()
                if not data:
                    if len(raw) - pos:
                        raise ConnectionClosedError(
                            f"noise: connection ended inside a message "
                            f"({len(raw) - pos} bytes of it received)"
                        )
                    raise ConnectionClosedError("Connection closed")
                raw += data
        except Exception as exc:
            self._raw_pos = pos
            if isinstance(exc, NoiseDecryptError):
                self._error = exc
            raise

    async def _recv_raw(self) -> bytes:
        sock = self._sock
        if sock is None:
            return await self.conn.read(_RECV_SIZE)
        try:
            if self._drained:
                # The last read emptied the socket: a recv now would almost surely fail
                # with EAGAIN, so wait for data first (saves a syscall per message).
                self._streak = 0
                await trio.lowlevel.wait_readable(sock)
            else:
                await trio.lowlevel.checkpoint_if_cancelled()
            while True:
                try:
                    data = sock.recv(_RECV_SIZE)
                    break
                except BlockingIOError:
                    self._streak = 0
                    await trio.lowlevel.wait_readable(sock)
            self._drained = len(data) < _RECV_SIZE
            if not self._drained:
                await self._maybe_yield()
            return data
        except trio.ClosedResourceError:
            return b""  # closed locally: end of stream, as TrioTCPStream reports it
        except OSError as exc:
            if sock.fileno() == -1:
                return b""
            raise ConnectionClosedError(f"noise: connection reset: {exc}", transport="tcp") from exc

    def __repr__(self) -> str:
        return f"<NoiseSession {self.local_peer} <-> {self.remote_peer}>"


def _os_socket(conn: IRawConnection) -> socket.socket | None:
    """The OS socket under py-libp2p's TCP connection (RawConnection > TrioTCPStream >
    trio.SocketStream > trio socket), or None for any other transport."""
    stream = getattr(getattr(conn, "stream", None), "stream", None)
    if not isinstance(stream, trio.SocketStream):
        return None
    sock = getattr(stream.socket, "_sock", None)  # trio keeps the stdlib socket here
    return sock if isinstance(sock, socket.socket) else None


def fast_session(session: ISecureConn, conn: IRawConnection) -> ISecureConn:
    """``NoiseSession`` with the state of py-libp2p's finished Noise ``session`` over ``conn``.

    Returns ``session`` unchanged (with a warning) if it is not the shape py-libp2p 0.8.1
    produces, so a py-libp2p upgrade degrades to the stock data path instead of failing.
    """
    reader = getattr(session, "conn", None)
    if not isinstance(session, SecureSession) or not isinstance(reader, NoiseTransportReadWriter):
        logger.warning("noise: unexpected session type %r; keeping py-libp2p's", type(session))
        return session
    if session.buf.getbuffer().nbytes or session.low_watermark != session.high_watermark:
        return session  # it already buffered transport data: not ours to take over
    protocol: Any = getattr(reader.noise_state, "noise_protocol", None)
    send_state: Any = getattr(protocol, "cipher_state_encrypt", None)
    recv_state: Any = getattr(protocol, "cipher_state_decrypt", None)
    keys = (getattr(send_state, "k", None), getattr(recv_state, "k", None))
    nonces = (getattr(send_state, "n", None), getattr(recv_state, "n", None))
    if not all(isinstance(k, bytes) and len(k) == 32 for k in keys) or not all(
        isinstance(n, int) for n in nonces
    ):
        logger.warning("noise: cannot read the cipher states; keeping py-libp2p's session")
        return session
    return NoiseSession(
        conn=conn,
        local_peer=session.local_peer,
        local_private_key=session.local_private_key,
        remote_peer=session.remote_peer,
        remote_permanent_pubkey=session.remote_permanent_pubkey,
        is_initiator=session.is_initiator,
        send_key=keys[0],  # type: ignore[arg-type]
        send_nonce=nonces[0],  # type: ignore[arg-type]
        recv_key=keys[1],  # type: ignore[arg-type]
        recv_nonce=nonces[1],  # type: ignore[arg-type]
    )


class NoiseTransport(StockNoiseTransport):
    """py-libp2p's ``/noise`` transport whose sessions use ``NoiseSession``.

    Built like py-libp2p's: ``NoiseTransport(key_pair, noise_privkey=x25519_private_key)``;
    the X25519 static key is generated if left out.
    """

    def __init__(
        self,
        libp2p_keypair: KeyPair,
        noise_privkey: PrivateKey | None = None,
        early_data: bytes | None = None,
        early_data_handler: EarlyDataHandler | None = None,
        rekey_policy: RekeyPolicy | None = None,
    ) -> None:
        if noise_privkey is None:
            noise_privkey = create_x25519_key_pair().private_key
        super().__init__(
            libp2p_keypair,
            noise_privkey,
            early_data=early_data,
            early_data_handler=early_data_handler,
            rekey_policy=rekey_policy,
        )

    async def secure_inbound(self, conn: IRawConnection) -> ISecureConn:
        return fast_session(await super().secure_inbound(conn), conn)

    async def secure_outbound(self, conn: IRawConnection, peer_id: ID) -> ISecureConn:
        return fast_session(await super().secure_outbound(conn, peer_id), conn)
