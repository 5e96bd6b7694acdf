"""Ray set-up: start a local Ray or join a cluster, once per process."""

from __future__ import annotations

import logging
import os
import socket

CONNECT_TIMEOUT_S = 10.0  # a cluster address with nothing listening fails after this, not after Ray's retries


def check_address(address: str) -> None:
    """``ValueError`` unless something accepts TCP connections at ``HOST:PORT`` (or ``ray://HOST:PORT``);
    other forms (``auto``, ``local``) are left to Ray."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ValueError(f"cannot connect to the Ray cluster at {address}: nothing answers there "
                         f"({exc.strerror or type(exc).__name__}); start it with `ray start --head --port={port}`") from None


def init_ray(workers: int | None = None, ray_address: str | None = None) -> None:
    """Start (or join) Ray once: ``ray_address`` / ``RAY_ADDRESS`` joins a cluster, else a local one."""
    import ray

    if ray.is_initialized():
        return
    address = ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        check_address(address)
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
        except ConnectionError as exc:  # a bad address is bad input: one clear line from the CLI
            hint = "" if os.environ.get("RAY_AUTH_MODE") else (
                "; a cluster from `ray start` uses token authentication: set RAY_AUTH_MODE=token here (the token"
                " is read from ~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)")
            raise ValueError(f"cannot connect to the Ray cluster at {address}: {exc}{hint}") from None
    else:
        ray.init(address="local", num_cpus=workers or os.cpu_count(), log_to_driver=False, include_dashboard=False,
                 logging_level=logging.ERROR)
