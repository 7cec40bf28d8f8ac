"""CurveZMQ keys: made by tm-keygen into a directory, read from it by master and slaves."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import zmq

from .errors import ConfigError, TransportError


@dataclass(frozen=True)
class Curve:
    """CurveZMQ keys: the master's public key, and this side's own key pair."""

    server_public: bytes
    public: bytes
    secret: bytes

    def apply(self, sock: zmq.Socket, server: bool) -> None:
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        if server:
            sock.setsockopt(zmq.CURVE_SERVER, 1)
        else:
            sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_public)


CURVE_NAMES = ("master", "slave")


def make_curve_keys(directory: Path, force: bool = False) -> list[Path]:
    """Write a master and a slave key pair into ``directory``; return the files made. Keys
    already there are kept (a ConfigError) unless ``force``."""
    import zmq.auth

    if not zmq.has("curve"):
        raise TransportError("this libzmq was built without CurveZMQ support")
    there = [directory / f"{name}{end}" for name in CURVE_NAMES for end in (".key", ".key_secret")
             if (directory / f"{name}{end}").exists()]
    if there and not force:
        raise ConfigError(f"{there[0]} exists: keys are already in {directory}; --force "
                          "replaces them (whoever holds the old ones can no longer connect)")
    made: list[Path] = []
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for name in CURVE_NAMES:
            public, secret = zmq.auth.create_certificates(str(directory), name)
            Path(secret).chmod(0o600)
            made += [Path(public), Path(secret)]
    except OSError as e:
        raise ConfigError(f"cannot write keys in {directory}: {e.strerror}; choose a "
                          "directory you can write") from None
    return made


def load_curve(directory: Path, role: str) -> Curve:
    """Keys for ``role`` ("master" or "slave") from a directory made by tm-keygen."""
    import zmq.auth

    def read(name: str) -> tuple[bytes, bytes | None]:
        path = directory / name
        try:
            return zmq.auth.load_certificate(str(path))
        except (OSError, ValueError) as e:
            raise TransportError(f"cannot read Curve key {path} ({e}); "
                                 "make keys with tm-keygen DIR") from None

    server_public, _ = read("master.key")
    public, secret = read(f"{role}.key_secret")
    if secret is None:
        raise TransportError(f"{directory / (role + '.key_secret')} holds no secret key")
    return Curve(server_public, public, secret)
