"""Chaos: real processes SIGKILLed at random moments, racing on one folder, under HTTP faults
and provider failures, with a damaged part; judged by the emulator's billing ledger.

Each round (one provider, one seed) first runs the frame undisturbed, then again on a fresh
folder while: child processes are started and SIGKILLed at random moments (after their
imports, so every kill lands inside a run); one start launches two processes together (one
must be refused); one child dies at the ``after_submit`` failpoint (the batch is created,
our checkpoint is not); HTTP faults hit creates (answers lost after the batch was made),
polls and downloads; some rows fail at the provider; and a random event part is truncated
and repaired. Then it resumes in-process and asserts, from ``emu.billing()`` (every request
of every batch the emulator accepted, collected or not):

* 0 duplicate billings (no ``custom_id`` billed twice),
* 0 lost rows (every billed request is a row of the result, every row is settled),
* spend within the cap (``max_cost_usd``; a second test caps at half the full cost),
* the final frame equal to the undisturbed run's (batch ids aside).

Randomness (where to kill, which part to damage) comes from a seeded ``random.Random``; all
outcomes must satisfy the invariants. CI runs ``CHAOS_KILLS`` (7) kills per provider, 21 or
more in all; ``benchmarks/chaos.py`` runs the long version (``BATCHATA_DF_CHAOS_KILLS``,
``BATCHATA_DF_CHAOS_SEEDS``) and writes the figures for the README.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from pydantic import BaseModel

from batchata_df import batch_llm, repair
from batchata_df.errors import CapSerialisedWarning, StateError

pytestmark = pytest.mark.chaos

KILLS = int(os.environ.get("BATCHATA_DF_CHAOS_KILLS", "7"))
SEEDS = [int(s) for s in os.environ.get("BATCHATA_DF_CHAOS_SEEDS", "20261128").split(",")]
REPORT = os.environ.get("BATCHATA_DF_CHAOS_REPORT")  # JSON lines of figures, if set

MODELS = {"openai": "gpt-4.1-mini", "anthropic": "claude-haiku-4-5",
          "gemini": "gemini-2.5-flash"}
CREATE = {"openai": r"^/openai/v1/batches$", "anthropic": r"/v1/messages/batches$",
          "gemini": r":batchGenerateContent$"}
POLL = {"openai": r"/openai/v1/batches/batch_", "anthropic": r"/v1/messages/batches/msgbatch",
        "gemini": r"/v1beta/batches/"}
PRICES = {m: (100.0, 400.0) for m in MODELS.values()}
ROWS = 16


class Item(BaseModel):
    label: str
    score: int


def frame() -> pl.DataFrame:
    texts = [f"item {i}" for i in range(ROWS)]
    texts[5] = "item 5 [[emulator:error:400]]"  # a provider failure: a failed row, never
    # billed (no provider bills a request that failed: LedgerEntry.unbilled)
    texts[11] = "item 11 [[emulator:invalid]]"  # an answer that does not validate
    return pl.DataFrame({"id": list(range(ROWS)), "text": texts})


def kwargs(provider: str, state: Path, cap: float | None) -> dict[str, object]:
    return {"schema": Item, "model": MODELS[provider], "prompt": "Rate: {text}",
            "state": state, "items_per_batch": 4, "max_parallel_batches": 4,
            "params": {"max_tokens": 64}, "prices": PRICES, "max_cost_usd": cap}


ZYGOTE = textwrap.dedent(
    """
    # A fork server: imports everything once, then forks a fresh run per request, so that
    # a kill costs no interpreter start-up (the CI budget is kills, not imports).
    import json, os, sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    import test_chaos as t
    from batchata_df import batch_llm
    from batchata_df.errors import StateLockedError
    import batchata_df.providers.openai, batchata_df.providers.anthropic
    import batchata_df.providers.gemini, batchata_df.repair
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "wait":
            _, status = os.waitpid(cmd["pid"], 0)
            print(json.dumps({"status": os.waitstatus_to_exitcode(status)}), flush=True)
            continue
        pid = os.fork()
        if pid:
            print(json.dumps({"pid": pid}), flush=True)
            continue
        code = 0
        try:
            os.environ.update(cmd["env"])
            while not os.path.exists(cmd["go"]):
                time.sleep(0.002)
            cap = cmd["cap"]
            try:
                out = t.frame().pipe(batch_llm, **t.kwargs(cmd["provider"],
                                                           Path(cmd["state"]), cap))
                said = f"DONE {out.height}"
            except StateLockedError:
                said = "LOCKED"
            Path(cmd["out"]).write_text(said)
        except BaseException as e:
            Path(cmd["out"]).write_text(f"ERROR {type(e).__name__}: {e}")
            code = 1
        finally:
            os._exit(code)
    """
)


class Children:
    """Runs of ``batch_llm`` in fresh forked processes of one pre-imported fork server."""

    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        script = tmp / "chaos_zygote.py"
        script.write_text(ZYGOTE)
        self.server = subprocess.Popen(
            [sys.executable, str(script), str(Path(__file__).parent)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )
        assert json.loads(self._read())["ready"]
        self.tmp = tmp
        self.n = 0

    def round(self, provider: str, state: Path, cap: float | None) -> Children:
        """Aim the next starts at one folder."""
        self.provider, self.state, self.cap = provider, state, cap
        return self

    def _read(self) -> str:
        assert self.server.stdout is not None
        line = self.server.stdout.readline()
        assert line, "the fork server died"
        return line

    def _send(self, cmd: dict[str, object]) -> dict[str, object]:
        assert self.server.stdin is not None
        self.server.stdin.write(json.dumps(cmd) + "\n")
        self.server.stdin.flush()
        return json.loads(self._read())

    def start(self, count: int = 1, env: dict[str, str] | None = None) -> list[Child]:
        self.n += 1
        go = self.tmp / f"go-{self.n}"
        kids = []
        for i in range(count):
            out = self.tmp / f"out-{self.n}-{i}"
            pid = self._send({"op": "run", "provider": self.provider, "state": str(self.state),
                              "cap": self.cap, "env": env or {}, "go": str(go),
                              "out": str(out)})["pid"]
            kids.append(Child(self, int(pid), out))  # type: ignore[call-overload]
        go.write_text("")
        return kids

    def close(self) -> None:
        assert self.server.stdin is not None
        self.server.stdin.close()
        self.server.wait(timeout=30)
        assert self.server.stdout is not None
        self.server.stdout.close()


class Child:
    def __init__(self, parent: Children, pid: int, out: Path) -> None:
        self.parent, self.pid, self.out = parent, pid, out
        self.code: int | None = None

    def alive(self) -> bool:
        # The fork server reaps; a child that exited has written its answer (or died).
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return not self.out.exists()

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)

    def wait(self) -> tuple[int, str]:
        if self.code is None:
            self.code = int(self.parent._send({"op": "wait", "pid": self.pid})["status"])
        said = self.out.read_text() if self.out.exists() else "KILLED"
        return self.code, said


@pytest.fixture(autouse=True)
def quick_gemini_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    # The calls this process makes itself (the resume after the kills) meet the round's
    # faults left over: the Gemini SDK retries them as often, with short waits (1, 2, 4 s
    # each were up to 12 s of a round spent asleep). The forked children keep the defaults.
    from batchata_df.providers.gemini import GeminiProvider

    monkeypatch.setattr(GeminiProvider, "retry_initial_delay", 0.01)
    monkeypatch.setattr(GeminiProvider, "retry_max_delay", 0.05)


@pytest.fixture(scope="module")
def zygote(emulator, tmp_path_factory) -> Iterator[Children]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("GOOGLE_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI", "HTTP_PROXY",
                        "HTTPS_PROXY")}
    server = Children({**env, **emulator.env()}, tmp_path_factory.mktemp("chaos"))
    yield server
    server.close()


_CALM: dict[str, pl.DataFrame] = {}


def undisturbed(emu, provider: str, tmp: Path) -> pl.DataFrame:
    """The frame run once without any trouble (per provider, cached for the module)."""
    if provider not in _CALM:
        emu.reset()
        emu.clear_faults()
        _CALM[provider] = frame().pipe(batch_llm, **kwargs(provider, tmp / "calm", None))
    emu.reset()
    return _CALM[provider]


def check_invariants(emu, out: pl.DataFrame, calm: pl.DataFrame, cap: float | None) -> dict:
    billed = Counter(e["custom_id"] for e in emu.billing())
    dupes = {k: n for k, n in billed.items() if n > 1}
    assert not dupes, f"billed twice: {dupes}"
    assert out.height == ROWS and out["id"].to_list() == list(range(ROWS))  # order kept
    job_ids = set(out["_job_id"].drop_nulls().to_list())
    assert set(billed) <= job_ids  # nothing billed that is not a row of ours
    settled = out["_status"].is_in(["completed", "failed", "cancelled"])
    assert settled.all(), out.filter(~settled)
    # Row 5's request always fails (a 400), and no provider bills a failed request:
    # Anthropic's errored results, OpenAI's error-file lines, Gemini's failed requests
    # (the emulator's LedgerEntry.unbilled cites each).
    sent = out.filter((pl.col("_status") != "cancelled") & (pl.col("id") != 5))
    sent = sent["_job_id"].to_list()
    assert set(sent) == set(billed), "a row was billed but not shown, or shown but not billed"
    cost = dict(zip(calm["_job_id"], calm["_cost_usd"], strict=True))
    spend = sum(cost[j] for j in billed)
    if cap is not None:
        assert spend <= cap + 1e-12, (spend, cap)
    assert abs(out["_cost_usd"].sum() - spend) < 1e-9  # what we report is what was billed
    return {"billed": sum(billed.values()), "duplicates": sum(n - 1 for n in billed.values()),
            "lost_rows": ROWS - out.height, "spend": spend, "cap": cap}


def chaos_round(
    emu, zygote: Children, tmp: Path, provider: str, seed: int, cap: float | None,
    *, kills_wanted: int, damage: bool = True, crash: bool = True,
) -> dict:
    rng = random.Random(f"{seed}-{provider}-{cap}")
    calm = undisturbed(emu, provider, tmp)
    emu.configure(latency=0.3)
    state = tmp / f"chaos-{provider}-{seed}"
    kids = zygote.round(provider, state, cap)
    # Faults for the whole round: lost create answers, failing polls and downloads.
    emu.inject_fault(method="POST", path_regex=CREATE[provider], status=500, times=1,
                     when="after")
    emu.inject_fault(method="GET", path_regex=POLL[provider], status=503, times=3,
                     retry_after_ms=5)
    emu.inject_fault(method="GET", path_regex=r"/(content|results)", status=500, times=2,
                     retry_after_ms=5)
    kills = races = 0
    try:
        if crash:
            (crashed,) = kids.start(env={"BATCHATA_DF_FAILPOINT": "after_submit"})
            code, said = crashed.wait()
            assert code == 75, said  # died between "created" and our checkpoint
        race_at = rng.randrange(kills_wanted)
        while kills < kills_wanted:
            if kills == race_at and not races:
                # Two processes started together on one folder: one runs, one is refused.
                pair = kids.start(count=2)
                deadline = time.monotonic() + 60
                while all(child.alive() for child in pair):  # the refusal comes at once
                    assert time.monotonic() < deadline, "neither call was refused"
                    time.sleep(0.01)
                time.sleep(rng.uniform(0.0, 0.9))
                for child in pair:
                    if child.alive():
                        child.kill()
                        kills += 1
                said_both = [child.wait()[1].split()[0] for child in pair]
                # Never both at once: one is refused (or, on a machine so loaded that one
                # started only after the other had finished, they ran one after the other;
                # the billing ledger below would show any overlap as a double bill).
                assert said_both.count("LOCKED") <= 1, said_both
                assert "ERROR" not in said_both, said_both
                races += said_both.count("LOCKED")
                continue
            (child,) = kids.start()
            time.sleep(rng.uniform(0.0, 0.9))
            if child.alive():
                child.kill()
                kills += 1
            code, said = child.wait()
            assert code in (0, -signal.SIGKILL), said
            assert not said.startswith("ERROR"), said
    except BaseException:
        zygote.close()  # children may be stuck: start afresh for the next test
        raise
    victim = None
    if damage:
        # Damage one event part at random, as a failing disk or a careless hand would.
        victim = rng.choice(sorted(state.glob("*/part-*.parquet")))
        data = victim.read_bytes()
        victim.write_bytes(data[: rng.randrange(len(data))])
        with pytest.raises(StateError, match="repair"):
            frame().pipe(batch_llm, **kwargs(provider, state, cap))
        emu.advance(60)  # let every batch end, so that what the part held can be listed
        assert repair(state, apply=True).applied
    with warnings.catch_warnings():
        # A capped resume may wait for its own batches (CapSerialisedWarning): expected here.
        warnings.simplefilter("ignore", CapSerialisedWarning)
        out = frame().pipe(batch_llm, **kwargs(provider, state, cap))
    figures = check_invariants(emu, out, calm, cap)
    if cap is None:
        assert_frame_equal(out.drop("_batch_id"), calm.drop("_batch_id"))
    else:
        done = out.filter(pl.col("_status") == "completed").drop("_batch_id")
        want = calm.drop("_batch_id").join(done.select("id"), on="id", how="semi")
        assert_frame_equal(done, want)
    figures.update(provider=provider, seed=seed, kills=kills, races=races, crashes=int(crash),
                   damaged=victim.parent.name if victim else None)
    if REPORT:
        with open(REPORT, "a") as f:
            f.write(json.dumps(figures) + "\n")
    return figures


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
@pytest.mark.filterwarnings("ignore::batchata_df.errors.ThinkingRoomWarning")  # not the subject
def test_random_kills_races_faults_and_damage_never_pay_twice(
    emu, zygote, tmp_path, provider, seed
):
    figures = chaos_round(emu, zygote, tmp_path, provider, seed, None, kills_wanted=KILLS)
    assert figures["kills"] >= KILLS and figures["duplicates"] == 0


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
@pytest.mark.filterwarnings("ignore::batchata_df.errors.ThinkingRoomWarning")  # not the subject
def test_kills_under_a_cost_cap_never_spend_over_it(emu, zygote, tmp_path, provider, seed):
    cap = float(undisturbed(emu, provider, tmp_path)["_cost_usd"].sum()) / 2
    figures = chaos_round(emu, zygote, tmp_path, provider, seed + 1, cap,
                          kills_wanted=max(2, KILLS // 3), damage=False, crash=False)
    assert figures["spend"] <= cap
    assert figures["billed"] < ROWS  # the cap did bind
