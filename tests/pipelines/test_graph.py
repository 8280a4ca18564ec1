"""The step graph: the same run order, ancestors and cycles networkx finds, without importing it."""

from __future__ import annotations

import random

import networkx as nx
import pytest

from pipelines.graph import StepGraph, find_cycles, needed_for, run_order
from schemas.errors import PipelineError


def _random_graph(seed: int, n: int = 9, cyclic: bool = False) -> StepGraph:
    rng = random.Random(seed)
    names = [f"s{rng.randrange(100):02d}_{i}" for i in range(n)]
    rng.shuffle(names)
    graph = StepGraph()
    for name in names:
        graph.add_node(name, type="t", kind="k")
    for i, consumer in enumerate(names):
        for producer in names[:i]:
            if rng.random() < 0.3:
                graph.add_reference(producer, consumer, "model")
    if cyclic:
        graph.add_reference(names[0], names[1], "data")
        graph.add_reference(names[1], names[2], "data")
        graph.add_reference(names[2], names[0], "back")  # closes names[0] -> names[1] -> names[2]
    return graph


@pytest.mark.parametrize("seed", range(20))
def test_order_and_ancestors_are_networkx_s(seed):
    graph = _random_graph(seed)
    nxg = graph.to_networkx()
    assert run_order(graph) == list(nx.lexicographical_topological_sort(nxg))
    last = run_order(graph)[-1]
    assert needed_for(graph, [last]) == {last} | nx.ancestors(nxg, last)
    assert find_cycles(graph) == []
    assert sorted(graph.edges) == sorted(nxg.edges)
    for name in graph.nodes:
        assert sorted(graph.predecessors(name)) == sorted(nxg.predecessors(name))


@pytest.mark.parametrize("seed", range(5))
def test_cycles_are_all_named_shortest_first(seed):
    graph = _random_graph(seed, cyclic=True)
    expected = sorted((list(c) for c in nx.simple_cycles(graph.to_networkx())), key=lambda c: (len(c), c))
    assert find_cycles(graph) == expected and expected
    with pytest.raises(PipelineError, match="cycle"):
        run_order(graph)


def test_an_edge_lists_every_field_that_makes_it():
    graph = StepGraph()
    graph.add_reference("base", "tune", "model")
    graph.add_reference("base", "tune", "reference")
    assert graph.edges == [("base", "tune")] and graph.fields("base", "tune") == ["model", "reference"]
    assert graph.to_networkx().get_edge_data("base", "tune") == {"fields": ["model", "reference"]}
