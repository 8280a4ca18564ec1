"""The DAG: exactly the references between steps, nothing implicit.

A workflow has a handful of steps, and `validate`, `plan` and `run` only need the edges, a stable run
order and a step's ancestors: a few lines over plain dicts. networkx (0.15-0.2 s to import, a third
of the time `pipeline validate` may take) is imported only to name every cycle of a graph that has one,
and by `StepGraph.to_networkx` for callers that want its algorithms.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Iterable

from schemas import StepConfig
from schemas.base import step_output_kind
from schemas.errors import PipelineError

if TYPE_CHECKING:
    import networkx as nx


class StepGraph:
    """Steps as nodes, producer -> consumer edges; each edge lists the consumer's fields that reference it.

    Offers the part of networkx's `DiGraph` interface the runner and tests read: `nodes`, `edges`,
    `predecessors`, `successors`.
    """

    def __init__(self) -> None:
        self.nodes: dict[str, dict] = {}
        self._fields: dict[tuple[str, str], list[str]] = {}
        self._pred: dict[str, list[str]] = {}
        self._succ: dict[str, list[str]] = {}

    def add_node(self, name: str, **attrs: object) -> None:
        """Add a step with its attributes (`type`, `kind`)."""
        self.nodes.setdefault(name, {}).update(attrs)
        self._pred.setdefault(name, [])
        self._succ.setdefault(name, [])

    def add_reference(self, producer: str, consumer: str, field: str) -> None:
        """`consumer`'s `field` names `producer`: one edge per pair, however many fields name it."""
        for name in (producer, consumer):
            if name not in self.nodes:
                self.add_node(name)
        if (producer, consumer) not in self._fields:
            self._fields[(producer, consumer)] = []
            self._succ[producer].append(consumer)
            self._pred[consumer].append(producer)
        self._fields[(producer, consumer)].append(field)

    @property
    def edges(self) -> list[tuple[str, str]]:
        """(producer, consumer) pairs, in the order they were added."""
        return list(self._fields)

    def fields(self, producer: str, consumer: str) -> list[str]:
        """The consumer's fields that reference the producer ([] when it references none)."""
        return list(self._fields.get((producer, consumer), []))

    def predecessors(self, name: str) -> list[str]:
        """The steps `name` takes outputs from."""
        return list(self._pred[name])

    def successors(self, name: str) -> list[str]:
        """The steps that take `name`'s output."""
        return list(self._succ[name])

    def to_networkx(self) -> "nx.DiGraph":
        """The same graph as a networkx `DiGraph` (nodes with `type` and `kind`, edges with `fields`)."""
        import networkx as nx

        graph = nx.DiGraph()
        graph.add_nodes_from(self.nodes.items())
        graph.add_edges_from((u, v, {"fields": list(f)}) for (u, v), f in self._fields.items())
        return graph


def build_graph(steps: dict[str, StepConfig]) -> StepGraph:
    """The graph of the steps' references (references to unknown steps are reported elsewhere)."""
    graph = StepGraph()
    for name, config in steps.items():
        graph.add_node(name, type=config.step_type(), kind=step_output_kind(config))
    for name, config in steps.items():
        for fld, targets in config.references().items():
            for target in targets:
                if target in steps:
                    graph.add_reference(target, name, fld)
    return graph


def _sorted_topologically(graph: StepGraph) -> list[str]:
    """Kahn's algorithm taking the smallest name among the ready steps (networkx's lexicographical order).

    Stops early on a cycle: the steps on or after a cycle never become ready.
    """
    waiting = {name: len(graph.predecessors(name)) for name in graph.nodes}
    ready = [name for name, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        name = heapq.heappop(ready)
        order.append(name)
        for consumer in graph.successors(name):
            waiting[consumer] -= 1
            if waiting[consumer] == 0:
                heapq.heappush(ready, consumer)
    return order


def find_cycles(graph: StepGraph) -> list[list[str]]:
    """Every elementary cycle as a list of steps (each named once), shortest first."""
    if len(_sorted_topologically(graph)) == len(graph.nodes):
        return []  # the usual case, answered without networkx
    import networkx as nx

    cycles = [list(c) for c in nx.simple_cycles(graph.to_networkx())]
    return sorted(cycles, key=lambda c: (len(c), c))


def run_order(graph: StepGraph) -> list[str]:
    """Topological order; ties broken by name so that plans and logs are stable."""
    order = _sorted_topologically(graph)
    if len(order) != len(graph.nodes):
        # validation refuses cycles before anyone asks for an order; this is a caller that skipped it
        raise PipelineError("the steps form a cycle: run `pipeline validate` to see which")
    return order


def needed_for(graph: StepGraph, steps: Iterable[str]) -> set[str]:
    """The steps plus everything they depend on."""
    out: set[str] = set()
    todo = list(steps)
    while todo:
        name = todo.pop()
        if name not in out:
            out.add(name)
            todo.extend(graph.predecessors(name))
    return out
