"""The ledger actor of `nas.target_ledger`: each distinct graph measured once on the board, and what
happens when a measurement does not come back.

The board's task asks for no CPU and for the resource `target:NAME` (the board has 1: one
measurement at a time), and Ray does not retry it by itself. When it fails, the ledger decides:

- the board's node left the cluster while the task was out (Ray says the node died, or a board node
  died since the task was launched): the board is lost, not the graph; the task is launched again and
  waits for a board to join, so whoever waits for it keeps waiting (at most `MAX_LOSSES` times a graph);
- another board joined as the target (its identity facts are not the study's: each task checks them
  on the board before timing): measuring stands still, the driver says why, until the board changes;
- otherwise (ONNX Runtime crashed on the graph, the board killed it for memory, the board refused it):
  that graph's measurement fails with one line, and is dropped, so a later ask (a fixed board) runs it again.

A worker that crashed because its node is going down can be reported before the cluster has marked
the node dead, so a failure that is not plainly the board's loss waits up to `GRACE_S` for the node
to be marked dead before it counts as the graph's.
"""
from __future__ import annotations

import time

import lightseg_board

MAX_LOSSES = 10  # a graph launched again after as many board losses fails instead: something else is wrong
GRACE_S = 45.0  # how long a crash waits for its node to be marked dead (Ray's health checks take ~30 s)


def _dead_nodes() -> set[str]:
    """The nodes of the cluster that have died (Ray drops a dead node's resources, so a board is not
    told from the others: a node that died while a measurement was out is taken for the board)."""
    import ray

    return {n["NodeID"] for n in ray.nodes() if not n.get("Alive")}


def one_line(exc: BaseException) -> str:
    """An exception's last line, with the type of its cause (a RayTaskError's is the board's own)."""
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}".strip()


class Ledger:
    """The actor: the finished measurements by key, the board's tasks still out, and those that failed."""

    def __init__(self, resource: str, known: dict[str, dict], expect: dict | None = None):
        import ray

        self.resource, self.expect = resource, expect  # expect: the board's identity facts (nas.target.IDENTITY)
        self.task = ray.remote(lightseg_board.measure_on_node).options(num_cpus=0, resources={resource: 1},
                                                                      max_retries=0)
        self.done = dict(known)
        self.pending: dict[str, object] = {}  # key -> the task's reference
        self.launched: dict[str, tuple] = {}  # key -> (graph, request, nodes dead at launch, losses so far)
        self.suspect: dict[str, tuple[float, str]] = {}  # key -> (when its crash was seen, the crash)
        self.failed: dict[str, tuple[str, str]] = {}  # key -> (the failed reference's hex, one line)
        self.held: dict[str, tuple] = {}  # key -> (graph, request, losses): waiting for the study's own board
        self.mismatch: tuple[str, frozenset] | None = None  # (why, the board nodes then) while another board is in

    def _boards(self) -> frozenset:
        import ray

        return frozenset(n["NodeID"] for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get(self.resource))

    def paused(self) -> str:
        """Why measuring stands still ("" when it does not): another board joined as the target."""
        self._settle()
        return self.mismatch[0] if self.mismatch else ""

    def _launch(self, key: str, graph: bytes, request, losses: int = 0) -> None:
        self.pending[key] = self.task.remote(graph, request, self.expect)
        self.launched[key] = (graph, request, _dead_nodes(), losses)
        self.suspect.pop(key, None)

    def _fail(self, key: str, why: str) -> None:
        ref = self.pending.pop(key)
        self.launched.pop(key, None)
        self.suspect.pop(key, None)
        self.failed[key] = (ref.hex(), why)

    def _settle(self) -> None:
        import ray
        from ray.exceptions import NodeDiedError, RayError, RayTaskError

        if self.mismatch and self._boards() != self.mismatch[1]:  # the board changed again: try it
            self.mismatch = None
            for key, (graph, request, losses) in self.held.items():
                self._launch(key, graph, request, losses)
            self.held.clear()
        refs = {ref: key for key, ref in self.pending.items()}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0) if refs else ([], [])
        for ref in ready:
            key = refs[ref]
            try:
                self.done[key] = ray.get(ref).to_dict()
            except RayTaskError as exc:  # the board refused the graph, or ONNX Runtime raised on it
                if isinstance(getattr(exc, "cause", None), lightseg_board.BoardMismatch):  # never mix two boards
                    graph, request, _, losses = self.launched.pop(key)
                    self.held[key] = (graph, request, losses)
                    del self.pending[key]
                    self.mismatch = (one_line(exc).split(": ", 1)[-1], self._boards())
                else:
                    self._fail(key, one_line(exc))
                continue
            except RayError as exc:  # the board's worker or node died with the task
                graph, request, dead_then, losses = self.launched[key]
                lost = isinstance(exc, NodeDiedError) or bool(_dead_nodes() - dead_then)
                if lost and losses < MAX_LOSSES:
                    self._launch(key, graph, request, losses + 1)  # waits for a board to join again
                elif lost:
                    self._fail(key, f"the board left the cluster {losses + 1} times while measuring this graph")
                else:
                    seen, _ = self.suspect.setdefault(key, (time.monotonic(), one_line(exc)))
                    if time.monotonic() - seen > GRACE_S:
                        self._fail(key, "the board's worker died measuring this graph (ONNX Runtime crashed or "
                                        f"the board ran out of memory): {self.suspect[key][1]}")
                continue
            del self.pending[key]
            self.launched.pop(key, None)
            self.suspect.pop(key, None)

    def ask(self, key: str, seen: str | None = None) -> dict:
        """{"record": ...} when measured, {"ref": [reference]} while measuring, {"error": line} when the
        measurement whose reference's hex is `seen` failed, {"wait": True} while a crash is judged, {}
        when never asked for (or failed before `seen`: ask again)."""
        self._settle()
        if key in self.done:
            return {"record": self.done[key]}
        if key in self.suspect or key in self.held:
            return {"wait": True}
        if key in self.pending:
            return {"ref": [self.pending[key]]}
        if seen is not None and self.failed.get(key, ("",))[0] == seen:
            return {"error": self.failed[key][1]}
        return {}

    def submit(self, key: str, graph: bytes, request: lightseg_board.Request, seen: str | None = None) -> dict:
        """`ask`, launching the measurement when nobody has yet (the actor runs one call at a time)."""
        found = self.ask(key, seen)
        if not found:
            self.failed.pop(key, None)
            self._launch(key, graph, request)
            found = {"ref": [self.pending[key]]}
        return found

    def finished(self, stored: list[str]) -> dict[str, dict]:
        """The finished measurements whose keys are not in `stored`."""
        self._settle()
        return {k: v for k, v in self.done.items() if k not in set(stored)}
