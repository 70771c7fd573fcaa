"""Per-layer kernel choice for compiled plans: timed once, remembered per machine.

The choice for a convolution is keyed by its problem id, the thread count and the candidate
list, under a machine key (CPU model, architecture, the c backend's instruction set, fastconv's
version): a file copied to another machine, or the same machine with ``FASTCONV_ISA`` forcing
another instruction set, finds no entry of its own and tunes afresh.  Choices live in memory for
the process and, when ``FASTCONV_TUNE_CACHE`` names a file, in that JSON file::

    {"format": 1, "machines": {"<machine key>": {"conv": {"<key>": {"backend": "c",
        "algorithm": "winograd", "ms": {"c/auto": 1.92, "c/winograd": 1.31}, "cpu_ms": {...}}},
        "layout": {"plan (8, 3, 224, 224) <hash> | threads 2 | nchw,blocked": {"layout": "blocked",
        "ms": {"nchw": 20.4, "blocked": 19.8}}}}}}

A plan's layout (whether its c convolutions keep channel-blocked activations) is chosen the same
way, by timing whole forward passes of each variant, keyed by a hash of the plan's steps.

An unreadable or malformed file is ignored (and rewritten); writes go to a temporary file
renamed over the old one, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import tempfile
import time
from dataclasses import replace

from . import dispatch, threads, timing

log = logging.getLogger("fastconv")

FORMAT = 1
#: Conv backends tuned by default, in "auto"'s order (naive is a specification; torch a reference).
CANDIDATE_BACKENDS = ("c", "im2col", "numba")
#: A candidate whose second call is this many times the fastest second call is not timed further
#: (the first, untimed, pays one-time costs: JIT compilation, the Winograd filter transform, whose
#: cost on a 512-channel layer had pruned Winograd where it was 1.3x faster).
PRUNE = 3.0
#: Timed rounds per candidate (interleaved), on the wall clock and on the process's CPU clock.
#: The fastest round counts: on a loaded machine other processes only ever add time.
ROUNDS = 3
#: Layout variants are timed for about this many seconds in all, in LAYOUT_ROUNDS[0] to [1] rounds.
LAYOUT_SECONDS, LAYOUT_ROUNDS = 3.0, (5, 15)
#: Another candidate replaces the default one ("auto"'s choice, which writes into the plan's
#: buffers) only when faster by this factor on both clocks: on a shared machine one clock alone
#: lets noise pick a kernel that is not faster.
MARGIN = 0.9

_MEMORY: dict[tuple[str, str], dict] = {}


def machine_key() -> str:
    """What a tuned choice depends on besides the problem: CPU, instruction set, fastconv version."""
    from . import __version__
    from ._cpu import cpu_model

    isa = "none"
    if dispatch.status("c")[0]:
        isa = dispatch.get_module("c").isa()
    return f"{cpu_model()} | {platform.machine()} | isa {isa} | fastconv {__version__}"


def cache_path() -> str | None:
    return os.environ.get("FASTCONV_TUNE_CACHE") or None


def load(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return {"format": FORMAT, "machines": {}}
    except (OSError, ValueError) as exc:
        log.warning("FASTCONV_TUNE_CACHE=%s is unreadable (%s); tuning afresh", path, exc)
        return {"format": FORMAT, "machines": {}}
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("machines"), dict):
        log.warning("FASTCONV_TUNE_CACHE=%s is not a fastconv tune cache of format %d; tuning afresh", path, FORMAT)
        return {"format": FORMAT, "machines": {}}
    return data


def save(path: str, machine: str, entries: dict, kind: str = "conv") -> None:
    """Merge ``entries`` into the file's ``kind`` section ("conv": per-layer choices, "layout":
    whole-plan layouts) for ``machine``."""
    data = load(path)  # merge with what other processes wrote meanwhile
    section = data["machines"].setdefault(machine, {})
    if not isinstance(section.get(kind), dict):
        section[kind] = {}
    section[kind].update(entries)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".fastconv-tune-", dir=directory)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not write FASTCONV_TUNE_CACHE=%s: %s", path, exc)


class Tuner:
    """Chooses (backend, algorithm) per convolution and a backend for the other ops of one plan."""

    def __init__(self, backend: str | None, winograd: bool, tune: bool):
        self.backend, self.winograd, self.tune = backend, winograd, tune
        self.machine = machine_key()
        self.path = cache_path()
        mine = load(self.path).get("machines", {}).get(self.machine, {}) if self.path else {}
        self.file = mine.get("conv", {}) if isinstance(mine.get("conv"), dict) else {}
        self.file_layout = mine.get("layout", {}) if isinstance(mine.get("layout"), dict) else {}
        self.new: dict[str, dict] = {}
        self.new_layout: dict[str, dict] = {}
        self.layout_ms: dict[str, float] = {}  # the last layout choice's timings (median pass, ms)
        self.log: list[tuple[str, str, str]] = []  # (problem id, choice, where it came from)

    def candidates(self, p, layer_algorithm: str) -> list[tuple[str, str]]:
        names = [self.backend] if self.backend else [n for n in CANDIDATE_BACKENDS if dispatch.status(n)[0]]
        out = []
        for name in names:
            algos = ["auto"]
            if name == "c" and (self.winograd or layer_algorithm == "winograd"):
                algos.append("winograd")
            if layer_algorithm != "auto":  # the layer asked for one algorithm
                algos = [layer_algorithm]
            for a in algos:
                if dispatch._refusal(name, replace(p, algorithm=a), requested=self.backend is not None) is None:
                    out.append((name, a))
        if not out:
            # The dispatcher's own error, naming the backend and why it refuses.
            dispatch.select(replace(p, algorithm=layer_algorithm), self.backend)
            raise dispatch.BackendError(f"no backend can run conv2d {p.id}")
        return out

    def choose_conv(self, p, layer_algorithm: str, make_call) -> tuple[str, str]:
        cands = self.candidates(p, layer_algorithm)
        if len(cands) == 1 or not self.tune:
            self.log.append((p.id, "/".join(cands[0]), "only candidate" if len(cands) == 1 else "untuned"))
            return cands[0]
        key = f"{p.id} | threads {threads.get_num_threads()} | " + ",".join("/".join(c) for c in cands)
        hit = _MEMORY.get((self.machine, key)) or self.file.get(key)
        if isinstance(hit, dict) and (hit.get("backend"), hit.get("algorithm")) in cands:
            _MEMORY[(self.machine, key)] = hit
            self.log.append((p.id, f"{hit['backend']}/{hit['algorithm']}", "cached"))
            return hit["backend"], hit["algorithm"]
        calls = {"/".join(c): make_call(*c) for c in cands}
        for call in calls.values():  # JIT, caches, thread pools, filter transforms
            call()
        first = {name: timing.time_calls(call) for name, call in calls.items()}
        fastest = min(first.values())
        kept = {name: call for name, call in calls.items() if first[name] <= PRUNE * fastest}
        default = "/".join(cands[0])
        kept.setdefault(default, calls[default])
        wall = {n: min(v) for n, v in timing.interleaved(kept, ROUNDS).items()}
        cpu = {n: min(v) for n, v in timing.interleaved(kept, ROUNDS, timer=time.process_time).items()}
        best = min(wall, key=wall.get)
        if not (wall[best] < MARGIN * wall[default] and cpu[best] < MARGIN * cpu[default]):
            best = default
        backend, algorithm = best.split("/")
        ms = {n: round(wall[n] * 1e3, 4) for n in wall}
        entry = {
            "backend": backend,
            "algorithm": algorithm,
            "ms": ms,
            "cpu_ms": {n: round(cpu[n] * 1e3, 4) for n in cpu},
        }
        _MEMORY[(self.machine, key)] = entry
        self.new[key] = entry
        self.log.append((p.id, best, "timed " + ", ".join(f"{n} {v:.3f} ms" for n, v in ms.items())))
        return backend, algorithm

    def choose_layout(self, key: str, runs: dict) -> str:
        """The fastest of a plan's layout variants (``runs``: name -> one forward pass), timed
        whole and interleaved: a layout changes what every step around a conversion costs, which
        no per-layer timing sees.  Remembered like the per-layer choices, under ``key``."""
        cands = ",".join(runs)
        full = f"{key} | {cands}"
        hit = _MEMORY.get((self.machine, full)) or self.file_layout.get(full)
        if isinstance(hit, dict) and hit.get("layout") in runs:
            _MEMORY[(self.machine, full)] = hit
            self.log.append(("plan layout", hit["layout"], "cached"))
            self.layout_ms = dict(hit.get("ms", {}))
            return hit["layout"]
        start = timing.clock()
        for run in runs.values():  # first calls: page faults in the arenas, caches, thread pools
            run()
        # Each sample follows an untimed pass of the same variant (settle_s: at least one call),
        # and the variants are compared round by round (the median of each one's time over the
        # first's in the same round), with as many rounds as about LAYOUT_SECONDS allow: timed
        # straight after another variant's pass and judged by the fastest of 5 passes each,
        # ResNet-18 at batch 1 kept NCHW over a blocked plan that ran 1.1x faster.
        per_pass = (timing.clock() - start) / len(runs)
        rounds = int(min(LAYOUT_ROUNDS[1], max(LAYOUT_ROUNDS[0], LAYOUT_SECONDS / (2 * len(runs) * per_pass))))
        samples = timing.interleaved(runs, rounds, settle_s=1e-9)
        first = next(iter(samples))
        rel = {n: statistics.median(a / b for a, b in zip(v, samples[first])) for n, v in samples.items()}
        # What is recorded and printed is what decided: each variant's median pass and its median
        # ratio to the first (the fastest passes could rank the variants the other way).
        wall = {n: statistics.median(v) for n, v in samples.items()}
        best = min(rel, key=rel.get)
        entry = {"layout": best, "ms": {n: round(v * 1e3, 3) for n, v in wall.items()}}
        self.layout_ms = dict(entry["ms"])
        _MEMORY[(self.machine, full)] = entry
        self.new_layout[full] = entry
        timed = ", ".join(f"{n} {wall[n] * 1e3:.2f} ms ({rel[n]:.3f}x {first})" for n in wall)
        self.log.append(("plan layout", best, f"timed over {rounds} rounds, medians: {timed}"))
        return best

    def backend_for(self, p) -> str:
        """Pooling: the requested backend, else c where it can, else "auto"'s choice."""
        if self.backend:
            return dispatch.select(p, self.backend)[0]
        if dispatch._refusal("c", p) is None:
            return "c"
        return dispatch.select(p, "auto")[0]

    def save(self) -> None:
        if self.path and self.new:
            save(self.path, self.machine, self.new)
        if self.path and self.new_layout:
            save(self.path, self.machine, self.new_layout, "layout")


def clear_memory() -> None:
    """Forget the choices tuned in this process (the file, if any, is kept)."""
    _MEMORY.clear()
