"""The DAG: exactly the references between steps, nothing implicit (networkx)."""

from __future__ import annotations

from typing import Iterable

import networkx as nx

from schemas import StepConfig


def build_graph(steps: dict[str, StepConfig]) -> nx.DiGraph:
    """A directed graph producer -> consumer; each edge lists the consumer's fields that reference it."""
    graph = nx.DiGraph()
    for name, config in steps.items():
        graph.add_node(name, type=config.step_type(), kind=config.output_kind)
    for name, config in steps.items():
        for fld, targets in config.references().items():
            for target in targets:
                if target in steps:
                    fields = graph.get_edge_data(target, name, {}).get("fields", [])
                    graph.add_edge(target, name, fields=fields + [fld])
    return graph


def find_cycles(graph: nx.DiGraph) -> list[list[str]]:
    """Every elementary cycle as a list of steps (each named once), shortest first."""
    cycles = [list(c) for c in nx.simple_cycles(graph)]
    return sorted(cycles, key=lambda c: (len(c), c))


def run_order(graph: nx.DiGraph) -> list[str]:
    """Topological order; ties broken by name so that plans and logs are stable."""
    return list(nx.lexicographical_topological_sort(graph))


def needed_for(graph: nx.DiGraph, steps: Iterable[str]) -> set[str]:
    """The steps plus everything they depend on."""
    out: set[str] = set()
    for step in steps:
        out |= {step} | nx.ancestors(graph, step)
    return out
