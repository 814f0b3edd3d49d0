"""What a search's workers get from the driver, so that no file system is shared between nodes.

Workers on other machines cannot see the driver's run folder, so nothing a worker needs or makes
goes through it: each trial's attempt number is counted by an actor on the driver's node, and
DUpsampling's reconstruction matrix W is fitted once per key by the driver, put in Ray's object
store and handed to the trials by reference (the actor maps a key to the reference, because Ray
Tune's trial configs should hold plain data). What workers make — results, validated weights —
comes back as task return values, and the driver writes it.
"""
from __future__ import annotations

import uuid

from search_spaces import ArchSpec
from search_spaces.blocks.decoders import UPSAMPLE
from search_spaces.blocks.dupsample import PatchPCA, exact_pca, patch_pca, patch_sample_size
from trainers.data import SegData


def reconstruction_key(spec: ArchSpec, ignore_index: int, seed: int) -> str | None:
    """What W depends on: the classes, ratio, N, ignore index and fitting seed (None: no DUpsampling)."""
    if spec.decoder.kind != "dupsample":
        return None
    return f"c{spec.input.num_classes}_r{spec.ratio}_n{spec.decoder.width}_i{ignore_index}_s{seed}"


def fit_for(spec: ArchSpec, data: SegData, seed: int):
    """(basis, mean) of `spec`'s DUpsampling decoder on this data, as `prepare_model` would fit it."""
    return pca_for(spec, data, seed).basis(spec.decoder.width)


def pca_for(spec: ArchSpec, data: SegData, seed: int) -> PatchPCA:
    """The patch PCA behind `spec`'s W on this data."""
    return patch_pca(data.train.masks, spec.input.num_classes, spec.ratio, spec.decoder.width,
                     data.info.ignore_index, seed)


def pca_key(spec: ArchSpec, data: SegData, seed: int) -> str:
    """What the PCA behind W depends on: classes, ratio and ignore index; the seed unless the
    decomposition is exact and the sample is every patch (taken in order, whatever the seed); N only
    where the decomposition is not exact (an exact one holds the components of every N)."""
    c, r = spec.input.num_classes, spec.ratio
    h, w = data.train.masks.shape[-2:]
    every = len(data.train) * (h // (UPSAMPLE * r)) * (w // (UPSAMPLE * r)) <= patch_sample_size(c, r)
    exact = exact_pca(c, r)  # the low-rank SVD draws a seeded random projection, every patch or not
    return (f"c{c}_r{r}_i{data.info.ignore_index}" + ("" if every and exact else f"_s{seed}")
            + ("" if exact else f"_n{spec.decoder.width}"))


class ReconstructionFits:
    """DUpsampling's W for any spec, each patch PCA made once (an eigendecomposition of a 2048-wide
    covariance takes seconds, and the driver's trials or the validated stage wait for it)."""

    def __init__(self) -> None:
        self.pcas: dict[str, PatchPCA] = {}

    def __call__(self, spec: ArchSpec, data: SegData, seed: int):
        """(basis, mean) as `fit_for` gives them."""
        key = pca_key(spec, data, seed)
        if key not in self.pcas:
            self.pcas[key] = pca_for(spec, data, seed)
        return self.pcas[key].basis(spec.decoder.width)


class _Ledger:
    """The actor: attempt counts per trial number, and the object-store reference of each fitted W."""

    def __init__(self) -> None:
        self.attempts: dict[int, int] = {}
        self.fits: dict[str, list] = {}

    def next_attempt(self, number: int) -> int:
        self.attempts[number] = self.attempts.get(number, 0) + 1
        return self.attempts[number]

    def put_fit(self, key: str, boxed: list) -> None:  # boxed: [ref], so Ray passes the reference itself
        self.fits[key] = boxed

    def get_fit(self, key: str) -> list | None:
        return self.fits.get(key)


class DriverServices:
    """Held by the driver: starts the ledger on its own node and fits W on demand."""

    def __init__(self) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.name = f"lightseg-ledger-{uuid.uuid4().hex[:12]}"
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.actor = ray.remote(num_cpus=0, max_restarts=0)(_Ledger).options(
            name=self.name, scheduling_strategy=here).remote()
        self.refs: dict[str, object] = {}
        self.fits = ReconstructionFits()

    def reconstruction(self, spec: ArchSpec, data: SegData, seed: int) -> str | None:
        """The key of `spec`'s W on `data`, fitted and published the first time it is asked for."""
        import ray

        key = reconstruction_key(spec, data.info.ignore_index, seed)
        if key is not None and key not in self.refs:
            self.refs[key] = ray.put(self.fits(spec, data, seed))
            ray.get(self.actor.put_fit.remote(key, [self.refs[key]]))
        return key

    def close(self) -> None:
        import ray

        ray.kill(self.actor)


def worker_attempt(ledger: str, number: int) -> int:
    """In a worker: this trial's attempt number (1, then 2 for Ray Tune's retry)."""
    import ray

    return ray.get(ray.get_actor(ledger).next_attempt.remote(number))


def worker_reconstruction(ledger: str, key: str | None):
    """In a worker: the (basis, mean) the driver published under `key` (None for no DUpsampling)."""
    if key is None:
        return None
    import ray

    boxed = ray.get(ray.get_actor(ledger).get_fit.remote(key))
    if boxed is None:
        raise RuntimeError(f"DUpsampling fit {key}: the driver published none")
    return ray.get(boxed[0])
