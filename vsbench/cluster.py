"""Ray set-up: start a local Ray or join a cluster, once per process."""

from __future__ import annotations

import logging
import os


def init_ray(workers: int | None = None, ray_address: str | None = None) -> None:
    """Start (or join) Ray once: ``ray_address`` / ``RAY_ADDRESS`` joins a cluster, else a local one."""
    import ray

    if ray.is_initialized():
        return
    address = ray_address or os.environ.get("RAY_ADDRESS")
    if address:
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
