import pytest
import torch
from torch import nn

from lwkit import models, search, sparse


def toy():
    """Two knobs with hand-computable costs and scores: moving 'a' is cheap in accuracy, 'b' is expensive."""
    knobs = {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3]}
    build = lambda policy: policy  # noqa: E731  (the 'model' is the policy itself)
    score = lambda p: 1.0 - 0.01 * p["a"] - 0.1 * p["b"]  # noqa: E731
    cost = lambda policy, model: 100 - 20 * policy["a"] - 15 * policy["b"]  # noqa: E731
    return knobs, build, score, cost


def test_greedy_moves_the_cheapest_knob_first():
    knobs, build, score, cost = toy()
    res = search.greedy_search(knobs, build, score, cost, budget=50)
    # rates: a loses 0.01 per 20 saved, b 0.1 per 15: a goes all the way (cost 40 <= 50) before b moves
    assert res.policy == {"a": 3, "b": 0} and res.cost == 40 and res.score == pytest.approx(0.97)
    assert [k for k, _, _ in res.path] == [None, "a", "a", "a"]
    res = search.greedy_search(knobs, build, score, cost, budget=30)
    assert res.policy == {"a": 3, "b": 1} and res.cost == 25


def test_greedy_stops_at_once_when_already_in_budget():
    knobs, build, score, cost = toy()
    res = search.greedy_search(knobs, build, score, cost, budget=1000)
    assert res.policy == {"a": 0, "b": 0} and res.path == [(None, 100.0, 1.0)]


def test_unreachable_budget_is_an_error():
    knobs, build, score, _ = toy()
    with pytest.raises(ValueError, match="below the cheapest policy's cost 40"):
        search.greedy_search(knobs, build, score, lambda p, m: 100 - 10 * p["a"] - 10 * p["b"], budget=30)


def test_budget_must_be_positive_and_knobs_valid():
    knobs, build, score, cost = toy()
    with pytest.raises(ValueError, match="budget must be a positive number"):
        search.greedy_search(knobs, build, score, cost, budget=0)
    with pytest.raises(ValueError, match="knobs"):
        search.greedy_search({"a": []}, build, score, cost, budget=10)
    with pytest.raises(TypeError, match="evaluate must be a function"):
        search.greedy_search(knobs, build, None, cost, budget=10)


def test_uniform_policy_is_the_best_fitting_shared_setting():
    knobs = {"x.s": [0, 1, 2], "y.s": [0, 1, 2]}
    res = search.uniform_policy(knobs, lambda p: p, lambda p: -p["x.s"], lambda p, m: 10 - 3 * p["x.s"] - 3 * p["y.s"],
                                budget=5)
    assert res.policy == {"x.s": 1, "y.s": 1} and res.cost == 4 and res.evaluations == 2
    with pytest.raises(ValueError, match="no uniform policy fits"):
        search.uniform_policy(knobs, lambda p: p, lambda p: 0, lambda p, m: 10, budget=5)


def lenet():
    torch.manual_seed(0)
    return models.LeNet300100(hidden=(40, 20))


def test_policy_size_bytes_by_hand():
    m = lenet()
    policy = {"fc1.sparsity": 0.9, "fc1.bits": 4, "fc2.sparsity": 0.0, "fc2.bits": 8,
              "fc3.sparsity": 0.5, "fc3.bits": 2}
    kept = {"fc1": 31360 - 28224, "fc2": 800, "fc3": 100}
    bits = kept["fc1"] * (4 + 5) + 32 * 16 + kept["fc2"] * 8 + 32 * 256 + kept["fc3"] * (2 + 5) + 32 * 4
    bits += 32 * (40 + 20 + 10)  # fp32 biases
    assert search.policy_size_bytes(m, policy) == bits / 8
    with pytest.raises(ValueError, match="unknown layers"):
        search.policy_size_bytes(m, {"fc9.bits": 4})


def test_apply_size_policy_prunes_and_shares_and_caches():
    m, cache = lenet(), {}
    policy = {"fc1.sparsity": 0.9, "fc1.bits": 3, "fc2.sparsity": 0.5, "fc2.bits": 2}
    out = search.apply_size_policy(m, policy, cache=cache)
    assert abs(sparse.sparsity(out.fc1.weight) - 0.9) < 0.01 and abs(sparse.sparsity(out.fc2.weight) - 0.5) < 0.01
    assert len(torch.unique(out.fc1.weight[out.fc1.weight != 0])) <= 8
    assert len(torch.unique(out.fc2.weight[out.fc2.weight != 0])) <= 4
    assert torch.equal(out.fc3.weight, m.fc3.weight)  # not in the policy: untouched
    again = search.apply_size_policy(m, policy, cache=cache)
    assert torch.equal(again.fc1.weight, out.fc1.weight) and len(cache) == 3


def test_size_knobs_and_bad_options():
    knobs = search.size_knobs(lenet())
    assert set(knobs) == {f"fc{i}.{k}" for i in (1, 2, 3) for k in ("sparsity", "bits")}
    with pytest.raises(ValueError, match="bits"):
        search.size_knobs(lenet(), bits=(8, 0))


def test_slice_hidden_keeps_outputs_when_removed_units_are_dead():
    m = lenet()
    with torch.no_grad():  # kill half of fc1's units: they carry nothing, so slicing them changes nothing
        m.fc1.weight[20:] = 0
        m.fc1.bias[20:] = -1.0  # relu(negative) = 0
    small = search.slice_hidden(m, {"fc1.width": 0.5})
    assert small.fc1.out_features == 20 and small.fc2.in_features == 20
    x = torch.randn(5, 1, 28, 28)
    assert torch.allclose(small(x), m(x), atol=1e-6)
    full = search.slice_hidden(m, {})
    assert torch.equal(full(x), m(x))


def test_slice_hidden_rejects_bad_policies():
    with pytest.raises(ValueError, match="hidden layer"):
        search.slice_hidden(lenet(), {"fc3.width": 0.5})
    with pytest.raises(ValueError, match=r"fraction in \(0, 1\]"):
        search.slice_hidden(lenet(), {"fc1.width": 0})
    with pytest.raises(ValueError, match="chain"):
        search.width_knobs(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2, 2)))


def test_latency_search_runs_under_a_measured_budget():
    m = lenet()
    x = torch.randn(64, 1, 28, 28)
    knobs = search.width_knobs(m, widths=(1.0, 0.5, 0.25))
    cost = search.latency_cost(x, threads=1, repeats=3)
    dense = cost({}, m)
    res = search.greedy_search(knobs, lambda p: search.slice_hidden(m, p), lambda model: 0.0, cost,
                               budget=10 * dense)
    assert res.policy == {"fc1.width": 1.0, "fc2.width": 1.0}  # generous budget: nothing to give up
