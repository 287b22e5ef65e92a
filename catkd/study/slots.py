"""How many trials of a study run at once: on this machine, or on a Ray cluster counted node by node
as Ray places them (what `--dry-run` packs its stages onto)."""
from __future__ import annotations

import os
from typing import Optional

import torch

from catkd.study.spec import StudySpec


def slots(spec: StudySpec, address: Optional[str] = None) -> tuple[int, str]:
    """Concurrent trials: min(max_concurrent, what fits), and the words for what was counted. On a Ray
    cluster (`address`, else RAY_ADDRESS) its alive nodes are counted; else this machine."""
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        fit, what = cluster_slots(spec.resources.cpu, spec.resources.gpu, cluster_nodes(address))
        return max(1, min(spec.max_concurrent, fit)), f"the Ray cluster at {address} fits {what}"
    cores = os.cpu_count() or 1
    cpu = max(spec.resources.cpu, 1e-9)
    fit = int(cores // cpu) or 1
    what = f"{cores} CPU cores / {spec.resources.cpu:g} per trial"
    if spec.resources.gpu and torch.cuda.is_available():
        fit = min(fit, int(torch.cuda.device_count() / spec.resources.gpu))
        what += f", {torch.cuda.device_count()} GPU / {spec.resources.gpu:g} per trial"
    return max(1, min(spec.max_concurrent, fit)), f"this machine fits {what}"


def _fits(have: float, per: float) -> int:
    return int(have / per + 1e-9)  # 1 / 0.25 is 4, and 0.3 / 0.1 is 3, not 2.9999...


def cluster_slots(cpu: float, gpu: float, nodes: list[dict[str, float]]) -> tuple[int, str]:
    """Trials of `cpu` CPU and `gpu` GPU each that the nodes (their Ray resources) hold at once,
    counted node by node as Ray places them: a trial never spans nodes, so each node holds
    min(its CPU / cpu, its GPU / gpu). A study asking for a GPU on a cluster without one runs its
    trials on CPU only (as the run does), so only CPU is counted then."""
    total_gpu = sum(n.get("GPU", 0.0) for n in nodes)
    use_gpu = bool(gpu) and total_gpu > 0
    per_node = [min(_fits(n.get("CPU", 0.0), cpu), _fits(n.get("GPU", 0.0), gpu) if use_gpu else 1 << 30)
                for n in nodes]
    used = [n for n, k in zip(nodes, per_node) if k > 0]
    parts = [f"{sum(n.get('CPU', 0.0) for n in used):g} CPU / {cpu:g} per trial"]
    if use_gpu:
        parts.append(f"{sum(n.get('GPU', 0.0) for n in used):g} GPU / {gpu:g} per trial")
    elif gpu:
        parts.append("no GPU in the cluster: trials run on CPU only")
    left = f" ({len(nodes) - len(used)} more fit no trial)" if len(used) < len(nodes) else ""
    return sum(per_node), f"{len(used)} node(s){left}: {', '.join(parts)} = {sum(per_node)} slots"


def cluster_nodes(address: str) -> list[dict[str, float]]:
    """The Ray resources ({"CPU": 4.0, "GPU": 1.0, ...}) of each alive node of the cluster at
    `address` (connects as a driver when not connected yet; nothing is scheduled)."""
    import ray

    from catkd.study.spec import StudyError

    connected = ray.is_initialized()
    if not connected:
        from catkd.study.stages import check_address

        check_address(address)
        try:
            ray.init(address=address, log_to_driver=False, logging_level="error")
        except (ConnectionError, RuntimeError, ValueError) as e:  # no cluster there: a user error, exit 2
            raise StudyError(f"--address {address}: cannot join a Ray cluster there "
                             f"({' '.join(str(e).split())[:200]})") from None
    try:
        return [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]
    finally:
        if not connected:
            ray.shutdown()
