"""What :mod:`services.correlator.faust_seam` relies on in Faust, mode and aiokafka is still
there: each check fails naming what moved, so a new release is looked at before it is run.

If one fails after an upgrade: read the named place in the new release, adapt the seam (its
docstring says why each change exists), then widen :data:`faust_seam.PINNED` and the pins of
``pyproject.toml`` together."""

from __future__ import annotations

import asyncio
import inspect
import signal
import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aiokafka
import faust
import pytest
from faust.transport import conductor, consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode import Service
from mode.services import WaitResults
from mode.threads import QueueServiceThread
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from services.correlator import faust_seam

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def require(condition: bool, moved: str) -> None:
    if not condition:
        pytest.fail(f"Faust seam: {moved} (see services/correlator/faust_seam.py)", pytrace=False)


def params(fn: Any) -> list[str]:
    return list(inspect.signature(fn).parameters)


def source(obj: Any) -> str:
    return inspect.getsource(obj)


@pytest.mark.parametrize("package", sorted(faust_seam.PINNED))
def test_pinned_versions_are_the_ones_the_seam_was_written_for(package: str) -> None:
    deps = [Requirement(d) for d in tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]]
    pins = {r.name: r.specifier for r in deps}
    require(pins.get(package) == SpecifierSet(faust_seam.PINNED[package]),
            f"pyproject.toml pins {package}{pins.get(package)}, the seam was checked for "
            f"{faust_seam.PINNED[package]}: check the seam against that release, then update PINNED")
    installed = version(package)
    require(installed in SpecifierSet(faust_seam.PINNED[package]),
            f"{package} {installed} is installed, outside {faust_seam.PINNED[package]}")


def test_the_worker_consumer_is_still_built_with_a_fixed_fetch_wait() -> None:
    create = inspect.unwrap(getattr(faust_aiokafka.AIOKafkaConsumerThread, "_create_worker_consumer", None))
    require(callable(create), "faust AIOKafkaConsumerThread._create_worker_consumer is gone")
    require(params(create) == ["self", "transport"],
            f"AIOKafkaConsumerThread._create_worker_consumer{inspect.signature(create)} "
            "no longer takes (self, transport)")
    require("fetch_max_wait_ms=1500" in source(create),
            "AIOKafkaConsumerThread._create_worker_consumer no longer sets fetch_max_wait_ms=1500: "
            "maybe it is a setting now (use it instead of the patch)")
    require("self._fetch_max_wait_ms = fetch_max_wait_ms" in source(aiokafka.AIOKafkaConsumer.__init__),
            "aiokafka AIOKafkaConsumer.__init__ no longer keeps _fetch_max_wait_ms")
    require("fetch_max_wait_ms=self._fetch_max_wait_ms" in source(aiokafka.AIOKafkaConsumer.start),
            "aiokafka AIOKafkaConsumer.start no longer hands _fetch_max_wait_ms to its fetcher")
    require("fetch_max_bytes" not in source(create),
            "AIOKafkaConsumerThread._create_worker_consumer sets fetch_max_bytes now: "
            "maybe it is a setting (use it instead of the patch)")
    require("self._fetch_max_bytes = fetch_max_bytes" in source(aiokafka.AIOKafkaConsumer.__init__),
            "aiokafka AIOKafkaConsumer.__init__ no longer keeps _fetch_max_bytes")
    require("fetch_max_bytes=self._fetch_max_bytes" in source(aiokafka.AIOKafkaConsumer.start),
            "aiokafka AIOKafkaConsumer.start no longer hands _fetch_max_bytes to its fetcher")


def test_the_fetch_loop_still_delivers_through_wait_first_racing_the_flow() -> None:
    drain = source(consumer.Consumer._drain_messages)
    require("await self.wait_first(" in drain and "callback(message), self.suspend_flow.wait()" in drain,
            "faust Consumer._drain_messages no longer delivers with "
            "wait_first(callback(message), self.suspend_flow.wait())")
    require("self.suspend_flow = Event()" in source(consumer.Consumer.__init__),
            "faust Consumer.__init__ no longer creates suspend_flow as an asyncio Event")
    require(inspect.unwrap(faust_aiokafka.Consumer.wait_first) is Service.wait_first,
            "faust's aiokafka Consumer now has its own wait_first (not mode Service.wait_first)")
    require(params(Service.wait_first) == ["self", "coros", "timeout"],
            f"mode Service.wait_first{inspect.signature(Service.wait_first)} is not (self, *coros, timeout)")
    init = source(Service.__init__)
    require("self._stopped = " in init and "self._crashed = " in init,
            "mode Service.__init__ no longer sets _stopped and _crashed")
    require(WaitResults._fields == ("done", "results", "stopped"),
            f"mode WaitResults fields are now {WaitResults._fields}")


def test_the_conductor_still_builds_one_handler_per_partition() -> None:
    require(params(conductor.Conductor._build_handler) == ["self", "tp", "channels"],
            f"faust Conductor._build_handler{inspect.signature(conductor.Conductor._build_handler)} "
            "is not (self, tp, channels)")
    require("self._build_handler(" in source(conductor.Conductor),
            "faust Conductor no longer calls self._build_handler for its partitions")
    require(hasattr(faust.App, "flow_control"), "faust App.flow_control is gone")


def test_the_consumer_commit_offsets_and_seek_are_where_they_were() -> None:
    cls = faust_aiokafka.Consumer
    require(params(cls._commit) == ["self", "offsets"] and inspect.iscoroutinefunction(cls._commit),
            f"faust Consumer._commit{inspect.signature(cls._commit)} is not async (self, offsets)")
    require(inspect.iscoroutinefunction(cls.seek) and params(cls.seek) == ["self", "partition", "offset"],
            f"faust Consumer.seek{inspect.signature(cls.seek)} is not async (self, partition, offset)")
    require("_thread" in inspect.get_annotations(consumer.ThreadDelegateConsumer),
            "faust ThreadDelegateConsumer._thread is gone")
    require(params(faust_aiokafka.AIOKafkaConsumerThread._ensure_consumer) == ["self"],
            "faust AIOKafkaConsumerThread._ensure_consumer() is gone or takes arguments")
    require(params(QueueServiceThread.call_thread) == ["self", "fun", "args", "kwargs"],
            "mode QueueServiceThread.call_thread is not (self, fun, *args, **kwargs)")
    for name in ("committed", "beginning_offsets"):
        require(inspect.iscoroutinefunction(getattr(aiokafka.AIOKafkaConsumer, name, None)),
                f"aiokafka AIOKafkaConsumer.{name} is gone or not async")


async def test_the_producer_under_faust_and_its_metadata() -> None:
    require(params(faust_aiokafka.Producer._ensure_producer) == ["self"],
            "faust Producer._ensure_producer() is gone or takes arguments")
    producer = aiokafka.AIOKafkaProducer(bootstrap_servers="127.0.0.1:9")  # never started
    try:
        metadata = faust_seam.producer_metadata(producer)
        require(callable(getattr(metadata, "partitions_for_topic", None)),
                "aiokafka AIOKafkaProducer._metadata.partitions_for_topic is gone")
        for name in ("create_batch", "send_batch"):
            require(callable(getattr(producer, name, None)), f"aiokafka AIOKafkaProducer.{name} is gone")
    finally:
        await producer.stop()


def test_the_patches_wrap_faust_once() -> None:
    faust_seam.install(100)
    patched = (faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer, faust_aiokafka.Consumer.wait_first)
    faust_seam.install(250)
    assert (faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer,
            faust_aiokafka.Consumer.wait_first) == patched  # not wrapped twice
    assert all(inspect.unwrap(fn) is not fn for fn in patched)  # ours, around Faust's
    assert faust_seam._FETCH_WAIT_MS[0] == 250 and faust_seam._FETCH_MAX_BYTES[0] == 1_048_576
    assert asyncio.Event.wait.__code__ is faust_seam._FLOW_WAIT


def test_the_app_still_drains_before_its_children_stop() -> None:
    from faust.app import base

    on_stop = source(base.App.on_stop)
    require("await self._stop_consumer()" in on_stop and "await self.on_before_shutdown.send()" in on_stop
            and on_stop.index("_stop_consumer()") < on_stop.index("on_before_shutdown.send()"),
            "faust App.on_stop no longer sends on_before_shutdown after stopping the fetcher")
    stop = source(Service.stop)
    require("await self.on_stop()" in stop and "await self._stop_children()" in stop
            and stop.index("self.on_stop()") < stop.index("self._stop_children()"),
            "mode Service.stop no longer runs on_stop before stopping the children")


def test_both_stop_signals_still_lead_to_schedule_shutdown() -> None:
    from mode.worker import Worker as ModeWorker

    require(params(ModeWorker._schedule_shutdown) == ["self", "signal"],
            f"mode Worker._schedule_shutdown{inspect.signature(ModeWorker._schedule_shutdown)} "
            "is not (self, signal)")
    for name in ("_on_sigterm", "_on_sigint"):
        require("self._schedule_shutdown(signal." in source(getattr(ModeWorker, name)),
                f"mode Worker.{name} no longer calls _schedule_shutdown")
        require(f"super().{name}()" in source(getattr(faust.Worker, name)),
                f"faust Worker.{name} no longer calls mode's")


async def test_on_stopping_and_the_worker_call_what_they_are_given() -> None:
    app = faust.App("seam-stop", broker="memory://", store="memory://", web_enabled=False)
    drained: list[str] = []

    async def drain() -> None:
        drained.append("drained")

    faust_seam.on_stopping(app, drain)
    await app.on_before_shutdown.send()
    assert drained == ["drained"]
    signalled: list[str] = []
    worker = faust_seam.worker(app, lambda: signalled.append("signal"), quiet=True)
    worker._signal_stop_time = 1.0  # (as if a stop were already scheduled: nothing is started)
    worker._schedule_shutdown(signal.SIGTERM)
    assert signalled == ["signal"]
