"""The cluster client's routing rules (pymodelmgr.cluster.routing), without Ray."""
from pymodelmgr.cluster.routing import NodeView, choose_placement, choose_replica, model_mb_hint


def model(state="ready", queue=0, running=0, mb=0, devices=("cuda:0",)):
    return {"state": state, "queue_depth": queue, "in_flight": running,
            "memory_bytes": int(mb * 2**20), "devices": list(devices)}


def test_warm_replica_with_the_shortest_queue_first():
    a = NodeView("a", {"m": model(queue=5)}, [1000])
    b = NodeView("b", {"m": model(queue=1)}, [1000])
    c = NodeView("c", {}, [1000])
    assert [n.node_id for n in choose_replica([a, b, c], "m")] == ["b", "a"]
    b.own["m"] = 9  # this client's own in-flight tasks count at once, before any poll
    assert [n.node_id for n in choose_replica([a, b, c], "m")] == ["a", "b"]
    c.assigned["m"] = 1.0  # just placed there: warm before the node reports it
    assert choose_replica([a, b, c], "m")[0].node_id == "c"
    a.models["m"]["state"] = "released"
    assert "a" not in [n.node_id for n in choose_replica([a, b, c], "m")]


def test_placement_fits_first_then_evicts_only_idle_then_least_loaded():
    full = NodeView("full", {"x": model(mb=800, running=1)}, [1000])
    idle = NodeView("idle", {"y": model(mb=800)}, [1000])
    empty = NodeView("empty", {}, [1000])
    order = [n.node_id for n in choose_placement([full, idle, empty], "m", "gpu", 500)]
    assert order == ["empty", "idle", "full"]  # fits; fits by evicting an idle model; busy
    order = [n.node_id for n in choose_placement([full, idle], "m", "gpu", 500)]
    assert order == ["idle", "full"]
    # unknown size: the node with most free memory
    assert choose_placement([full, empty], "m", "gpu", None)[0].node_id == "empty"
    # too big for every node: least loaded
    full.outstanding = 50
    assert choose_placement([full, idle], "m", "gpu", 5000)[0].node_id == "idle"


def test_cpu_models_ignore_gpu_memory_and_go_to_the_least_loaded():
    a = NodeView("a", {"x": model(mb=900)}, [1000])
    b = NodeView("b", {}, [10])
    a.outstanding = 3
    assert choose_placement([a, b], "m", "cpu", None)[0].node_id == "b"
    b.outstanding = 10
    assert choose_placement([a, b], "m", "cpu", None)[0].node_id == "a"


def test_memory_hint_of_synthetic_models():
    assert model_mb_hint("synthetic/embedding?dim=4&mem_mb=800") == 800
    assert model_mb_hint("synthetic/embedding?dim=4") is None
    assert model_mb_hint("org/model?mem_mb=3") is None
