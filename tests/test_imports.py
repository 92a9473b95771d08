"""Imports inside vit_jax/ flow one way: a test that fails on any cycle.

Walks every module's source with `ast`, counting imports at module level and
inside functions alike (a deferred import still ties the two modules
together), builds the graph of vit_jax modules, and names each cycle found.
"""

import ast
import os

from tests.conftest import REPO

PACKAGE = 'vit_jax'


def _imported_modules(tree: ast.AST, known: set[str]) -> set[str]:
  """vit_jax modules one module imports, wherever the import statement is."""
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      # `from vit_jax import a, b` names modules; `from vit_jax.a import x`
      # names a module and something in it; `from . import a` is relative.
      base = PACKAGE if node.level else ''
      module = '.'.join(p for p in (base, node.module) if p)
      names = [f'{module}.{alias.name}' for alias in node.names] + [module]
    else:
      continue
    for name in names:
      parts = name.split('.')
      if parts[0] == PACKAGE and len(parts) > 1 and parts[1] in known:
        found.add(parts[1])
  return found


def import_graph(package_dir: str) -> dict[str, set[str]]:
  """{module: vit_jax modules it imports} for every .py file of the package."""
  modules = {name[:-3] for name in os.listdir(package_dir)
             if name.endswith('.py') and name != '__init__.py'}
  graph = {}
  for module in sorted(modules):
    with open(os.path.join(package_dir, module + '.py')) as f:
      tree = ast.parse(f.read(), filename=module + '.py')
    graph[module] = _imported_modules(tree, modules) - {module}
  return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Every elementary cycle once, each as [a, b, ..., a] from its least name.

  The package has a few dozen modules, so a depth-first search from each
  module, only through modules named after it, is plenty.
  """
  cycles = []

  def walk(start, node, path):
    for nxt in sorted(graph.get(node, ())):
      if nxt == start:
        cycles.append(path + [start])
      elif nxt > start and nxt not in path:
        walk(start, nxt, path + [nxt])

  for start in sorted(graph):
    walk(start, start, [start])
  return cycles


def test_a_cycle_is_found_and_named():
  graph = {'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}
  assert find_cycles(graph) == [['a', 'b', 'c', 'a']]
  assert find_cycles({'a': {'b'}, 'b': set()}) == []


def test_function_level_imports_count(tmp_path):
  (tmp_path / 'one.py').write_text('from vit_jax import two\n')
  (tmp_path / 'two.py').write_text(
      'def f():\n  from vit_jax import one  # deferred\n  return one\n')
  (tmp_path / 'three.py').write_text('import vit_jax.one as o\n')
  (tmp_path / 'four.py').write_text('from .three import o\n')
  assert import_graph(str(tmp_path)) == {
      'one': {'two'}, 'two': {'one'}, 'three': {'one'}, 'four': {'three'}}


def test_no_import_cycle_in_the_package():
  cycles = find_cycles(import_graph(os.path.join(REPO, PACKAGE)))
  assert not cycles, 'Import cycles in vit_jax/: ' + '; '.join(
      ' -> '.join(cycle) for cycle in cycles)


COMMAND_LINES = ('main', 'evaluate', 'predict', 'visualize', 'benchmark')


def test_no_module_of_the_package_imports_a_command_line():
  graph = import_graph(os.path.join(REPO, PACKAGE))
  importers = {f'{module} imports {cli}' for module, imported in graph.items()
               for cli in COMMAND_LINES if cli in imported}
  assert not importers, sorted(importers)
