"""Chain runtime: threads + bounded queues, Connection semantics, failures, chain hashing."""

from __future__ import annotations

import hashlib
import json
import threading
import time

import ismrmrd
import numpy as np
import pytest

from gadgets.chain import Chain, GadgetSpec, load_chain, parse_chain, parse_overrides
from gadgets.runtime import ChainError, RunningChain, run_chain

HEADER = None  # these gadgets never look at the header


# --- test gadgets (real gadget functions, referenced by module/target) ---------------------------


def double(connection, *, factor: float = 2.0) -> None:
    for item in connection:
        connection.send(item * factor)


def slow(connection, *, delay_s: float = 0.001) -> None:
    for item in connection:
        time.sleep(delay_s)
        connection.send(item)


def explode_at(connection, *, at: int = 3) -> None:
    for i, item in enumerate(connection):
        if i == at:
            raise RuntimeError(f"boom at item {i}")
        connection.send(item)


def only_ints(connection) -> None:
    connection.filter(int)
    for mid, item in connection.iter_with_mids():
        connection.send(("seen", mid, item))


def stop_early(connection) -> None:
    for i, item in enumerate(connection):
        connection.send(item)
        if i == 1:
            return


def _chain(*stages: tuple[str, str, dict], queue_size: int = 4) -> Chain:
    specs = tuple(GadgetSpec(name, __name__, target, params) for name, target, params in stages)
    return Chain(name="test", version="1", gadgets=specs, queue_size=queue_size)


def test_items_flow_through_stages_in_order() -> None:
    chain = _chain(("a", "double", {}), ("b", "slow", {}), ("c", "double", {"factor": 3.0}), queue_size=2)
    out = run_chain(chain, HEADER, range(50), images_only=False)
    assert out == [6.0 * i for i in range(50)]


def test_bounded_queues_apply_backpressure() -> None:
    # A slow last stage with queue size 1: the producer can run at most a few items ahead.
    chain = _chain(("fast", "double", {"factor": 1.0}), ("slow", "slow", {"delay_s": 0.01}), queue_size=1)
    rc = RunningChain(chain, HEADER)
    fed: list[float] = []

    def feed() -> None:
        for i in range(20):
            rc.put(i)
            fed.append(time.perf_counter())
        rc.close()

    t = threading.Thread(target=feed)
    t0 = time.perf_counter()
    t.start()
    time.sleep(0.06)
    ahead = len(fed)
    out = list(rc)
    t.join()
    assert out == list(range(20))
    # queue capacities 1+1+1 plus one item in each of the two gadgets: never more than ~6 ahead
    assert ahead <= 8, f"producer ran {ahead} items ahead of a slow consumer"
    assert time.perf_counter() - t0 >= 0.19


def test_failure_propagates_with_gadget_name_and_does_not_hang() -> None:
    chain = _chain(
        ("first", "slow", {"delay_s": 0.0}),
        ("bad", "explode_at", {"at": 3}),
        ("last", "slow", {}),
        queue_size=1,
    )
    t0 = time.perf_counter()
    with pytest.raises(ChainError, match="gadget 'bad' failed: RuntimeError: boom at item 3") as info:
        run_chain(chain, HEADER, range(10_000), images_only=False)
    assert info.value.gadget == "bad"
    assert time.perf_counter() - t0 < 5


def test_input_iterator_failure_is_reported() -> None:
    def source():
        yield 1
        raise OSError("scanner went away")

    with pytest.raises(ChainError, match="'<input>' failed: OSError: scanner went away"):
        run_chain(_chain(("a", "double", {})), HEADER, source(), images_only=False)


def test_filter_passes_other_items_downstream() -> None:
    out = run_chain(_chain(("f", "only_ints", {})), HEADER, [1, "x", 2.5, 3], images_only=False)
    assert out == [("seen", 0, 1), "x", 2.5, ("seen", 0, 3)]


def test_gadget_returning_early_does_not_block_upstream() -> None:
    chain = _chain(("src", "double", {"factor": 1.0}), ("stop", "stop_early", {}), queue_size=1)
    out = run_chain(chain, HEADER, range(100), images_only=False)
    assert out == [0, 1]


def test_images_are_stamped_with_chain_identity() -> None:
    chain = load_chain("passthrough")
    img = ismrmrd.Image.from_array(np.zeros((4, 4), np.float32))
    out = run_chain(chain, HEADER, [img])
    assert out[0].meta["unisono.chain"] == "passthrough"
    assert out[0].meta["unisono.chain_sha256"] == chain.sha256


# --- chain hashing ----------------------------------------------------------------------------------


def test_chain_hash_is_sha256_of_canonical_parameters() -> None:
    chain = load_chain("cartesian")
    canonical = chain.canonical()
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    assert chain.sha256 == hashlib.sha256(text.encode()).hexdigest()
    # defaults are part of the hash: every stage lists its resolved parameters
    params = {g["name"]: g["params"] for g in canonical["gadgets"]}
    assert params["noise"] == {"relative_bandwidth": 1.0, "keep_noise": False}
    assert params["harmonize"]["profile"] == "default"


def test_chain_hash_is_stable_and_sensitive() -> None:
    a = load_chain("cartesian")
    assert a.sha256 == load_chain("cartesian").sha256
    # stating a default explicitly does not change the reconstruction, nor the hash
    assert load_chain("cartesian", overrides={"combine": {"method": "rss"}}).sha256 == a.sha256
    # any real parameter change does
    assert load_chain("cartesian", overrides={"finish": {"scale": 2.0}}).sha256 != a.sha256
    assert load_chain("cartesian", overrides={"harmonize": {"enabled": False}}).sha256 != a.sha256
    # reordering keys in the file does not
    text = open(a.source).read()
    b = parse_chain(text.replace('name = "cartesian"\nversion = "1"', 'version = "1"\nname = "cartesian"'))
    assert b.sha256 == a.sha256


def test_parse_overrides() -> None:
    assert parse_overrides(["harmonize.enabled=false", "finish.output=complex", "finish.scale=2.5"]) == {
        "harmonize": {"enabled": False},
        "finish": {"output": "complex", "scale": 2.5},
    }
    with pytest.raises(ValueError, match="gadget.param=value"):
        parse_overrides(["enabled=false"])


def test_chain_for_header_follows_the_trajectory() -> None:
    from gadgets.chain import chain_for_header
    from gadgets.synthetic import make_header

    expected = {"cartesian": "cartesian", "epi": "epi", "radial": "radial", "goldenangle": "radial"}
    for trajectory, chain in {**expected, "spiral": "spiral"}.items():
        assert chain_for_header(make_header((8, 8), trajectory=trajectory)) == chain
    with pytest.raises(ValueError, match="no shipped chain for trajectory 'other'"):
        chain_for_header(make_header((8, 8), trajectory="other"))
