"""Where a compiled step's time goes: a profiler trace's per-op times joined with the optimized HLO.

Each HLO instruction that runs (a fusion, a gemm or attention custom-call, a copy, ...) is given a
category from what it computes and from the named scopes our code puts on its ops (model.py:
"attention", "layer_norm"; train.py: "teacher", "relation_loss", "optimizer"), and a floor: its
FLOPs over the device's peak and the bytes it reads and writes over the memory bandwidth. Times
come from the trace (jax.profiler's Perfetto JSON), nested events counted once (self time).
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import json
import math
import re
from pathlib import Path

_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
          "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = (.*)$")
_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+) \(.*\{\s*$")
# Ops that move no data of their own or only route it (their time, if any, is loop control).
_CONTROL = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast", "while", "conditional",
            "call", "after-all", "partition-id", "replica-id"}
_MOVEMENT = {"copy", "transpose", "dynamic-slice", "dynamic-update-slice", "gather", "scatter", "slice",
             "concatenate", "pad", "copy-start", "copy-done", "broadcast", "reshape", "iota"}
CATEGORIES = ("matmul", "attention", "layer_norm", "relation_loss", "optimizer", "elementwise",
              "data_movement", "control", "unattributed")
PHASES = ("teacher", "students", "relation_loss", "optimizer", "unattributed")


@dataclasses.dataclass
class Instr:
  name: str
  shape: str
  opcode: str
  operands: list[str]
  attrs: str


@dataclasses.dataclass
class OpInfo:
  category: str
  phase: str
  flops: float  # per execution
  bytes: float  # read + written per execution
  executions: int  # per step, from the loops' known trip counts (conditional branches: taken)


def _split_shape(rest: str) -> tuple[str, str]:
  """'shape opcode(...)...' -> (shape, the remainder), for array and tuple shapes."""
  if not rest.startswith("("):
    shape, _, tail = rest.partition(" ")
    return shape, tail
  depth = 0
  for i, ch in enumerate(rest):
    depth += ch == "("
    depth -= ch == ")"
    if depth == 0:
      return rest[:i + 1], rest[i + 2:]
  return rest, ""


def _parse_instr(line: str) -> Instr | None:
  m = _INSTR.match(line)
  if not m:
    return None
  shape, tail = _split_shape(m.group(2))
  opcode, _, after = tail.partition("(")
  depth, close = 1, len(after)
  for i, ch in enumerate(after):
    depth += (ch == "(") - (ch == ")")
    if depth == 0:
      close = i
      break
  operands = re.findall(r"%([\w.\-]+)", after[:close])
  return Instr(m.group(1), shape, opcode.strip(), operands, after[close + 1:])


def parse_hlo(text: str) -> dict[str, list[Instr]]:
  """Computation name -> its instructions, from a compiled module's as_text()."""
  computations, current = {}, None
  for line in text.splitlines():
    header = _HEADER.match(line)
    if header:
      current = computations.setdefault(header.group(1), [])
    elif line.strip() == "}":
      current = None
    elif current is not None and (instr := _parse_instr(line)):
      current.append(instr)
  return computations


def shape_bytes(shape: str) -> int:
  return sum(_BYTES.get(dt, 4) * math.prod(int(d) for d in dims.split(",") if d)
             for dt, dims in _ARRAY.findall(shape))


def _dims(shape: str) -> list[int]:
  m = _ARRAY.search(shape)
  return [int(d) for d in m.group(2).split(",") if d] if m else []


def _dot_flops(instr: Instr, shapes: dict[str, str]) -> float:
  """2 x output elements x contracted size, for a dot or a cuBLAS gemm custom-call."""
  m = (re.search(r"lhs_contracting_dims=\{([\d,]*)\}", instr.attrs)
       or re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', instr.attrs))
  if not m or not instr.operands or instr.operands[0] not in shapes:
    return 0.0
  lhs = _dims(shapes[instr.operands[0]])
  contracted = math.prod(lhs[int(d.strip('"'))] for d in m.group(1).split(",") if d.strip('"'))
  return 2.0 * math.prod(_dims(instr.shape)) * contracted


def _attention_flops(instr: Instr, shapes: dict[str, str]) -> float:
  """A fused attention custom-call: 4 B H T^2 D forward (two matmuls), 2.5x that backward."""
  q = _dims(shapes.get(instr.operands[0], "")) if instr.operands else []
  if len(q) != 4:
    return 0.0
  b, t, h, d = q
  return 4.0 * b * h * t * t * d * (2.5 if "bwd" in instr.attrs.lower() else 1.0)


def _scope(attrs: str) -> str:
  m = re.search(r'op_name="([^"]*)"', attrs)
  return m.group(1) if m else ""


def _kind(instr: Instr, computations: dict[str, list[Instr]]) -> tuple[str, list[Instr]]:
  """('matmul' | 'attention' | 'elementwise' | 'data_movement' | 'control', the instructions whose
  FLOPs count: the instruction itself or a fusion's body)."""
  target = re.search(r'custom_call_target="([^"]*)"', instr.attrs)
  if instr.opcode == "custom-call" and target:
    t = target.group(1).lower()
    if "fmha" in t or "flash" in t or "attention" in t:
      return "attention", [instr]
    if "gemm" in t or "matmul" in t:
      return "matmul", [instr]
  if instr.opcode == "fusion":
    called = re.search(r"calls=%?([\w.\-]+)", instr.attrs)
    body = computations.get(called.group(1), []) if called else []
    if any(i.opcode in ("dot", "convolution") for i in body):
      return "matmul", body
    ops = {i.opcode for i in body} - _CONTROL
    return ("data_movement" if ops and ops <= _MOVEMENT else "elementwise"), body
  if instr.opcode in ("dot", "convolution"):
    return "matmul", [instr]
  if instr.opcode in _CONTROL:
    return "control", []
  return ("data_movement" if instr.opcode in _MOVEMENT else "elementwise"), [instr]


def _executions(computations: dict[str, list[Instr]], entry: str) -> dict[str, int]:
  """How often each non-fused computation runs per call of `entry` (while bodies: known trip
  counts; conditional branches and calls: as often as their caller)."""
  runs = {entry: 1}
  stack = [entry]
  while stack:
    name = stack.pop()
    for instr in computations.get(name, []):
      trips = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', instr.attrs)
      looped = re.findall(r"\b(?:body|condition)=%?([\w.\-]+)", instr.attrs)
      once = re.findall(r"\b(?:to_apply|true_computation|false_computation)=%?([\w.\-]+)", instr.attrs)
      for group in re.findall(r"branch_computations=\{([^}]*)\}", instr.attrs):
        once += re.findall(r"[\w.\-]+", group.replace("%", " "))
      for callee in looped + once:
        if callee in computations and callee not in runs:
          loops = int(trips.group(1)) if trips and callee in looped else 1
          runs[callee] = runs[name] * loops
          stack.append(callee)
  return runs


def instruction_table(hlo_text: str) -> dict[str, OpInfo]:
  """Every instruction of the module's non-fused computations: category, phase, FLOPs, bytes."""
  computations = parse_hlo(hlo_text)
  entry = re.search(r"^ENTRY %?([\w.\-]+)", hlo_text, re.M)
  runs = _executions(computations, entry.group(1) if entry else next(iter(computations)))
  table = {}
  for comp, count in runs.items():
    shapes = {i.name: i.shape for i in computations[comp]}
    for instr in computations[comp]:
      kind, counted = _kind(instr, computations)
      body_shapes = {**shapes, **{i.name: i.shape for i in counted}}
      flops = sum(_dot_flops(i, body_shapes) for i in counted if i.opcode in ("dot", "custom-call")
                  and kind == "matmul")
      if kind == "attention":
        flops = _attention_flops(instr, shapes)
      moved = 0 if kind == "control" else shape_bytes(instr.shape) + sum(
          shape_bytes(shapes.get(o, "")) for o in instr.operands)
      scope = _scope(instr.attrs)
      phase = next((p for p in ("optimizer", "relation_loss", "teacher") if p in scope), "students")
      category = next((c for c in ("optimizer", "relation_loss", "attention", "layer_norm") if c in scope),
                      kind)
      if kind == "attention":
        category = "attention"
      table[instr.name] = OpInfo(category, phase, flops, moved, count)
  return table


def self_times(trace_path: Path, module: str) -> tuple[dict[str, float], int]:
  """(hlo op -> summed self time in seconds, events) of `module`'s ops in a Perfetto trace;
  an event nested in another on the same thread is taken out of its parent's time."""
  with gzip.open(trace_path, "rt") as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  ours = [e for e in events if e.get("ph") == "X" and (e.get("args") or {}).get("hlo_module") == module
          and "hlo_op" in e["args"]]
  by_thread = collections.defaultdict(list)
  for e in ours:
    by_thread[(e["pid"], e["tid"])].append(e)
  times = collections.Counter()
  for thread in by_thread.values():
    thread.sort(key=lambda e: (e["ts"], -e["dur"]))
    open_events: list[dict] = []
    for e in thread:
      while open_events and open_events[-1]["ts"] + open_events[-1]["dur"] <= e["ts"]:
        open_events.pop()
      if open_events:
        times[open_events[-1]["args"]["hlo_op"]] -= e["dur"] * 1e-6
      times[e["args"]["hlo_op"]] += e["dur"] * 1e-6
      open_events.append(e)
  return dict(times), len(ours)


def breakdown(table: dict[str, OpInfo], times: dict[str, float], steps: int, wall_s: float,
              peak_flops: float | None, bandwidth: float | None) -> dict:
  """Per category and per phase: ms per step, share of the step's wall time, and the floors."""
  def empty():
    return {"ms": 0.0, "flops": 0.0, "bytes": 0.0}
  cats = {c: empty() for c in CATEGORIES}
  phases = {p: empty() for p in PHASES}
  for op, seconds in times.items():
    info = table.get(op)
    for group, key in ((cats, info.category if info else "unattributed"),
                       (phases, info.phase if info else "unattributed")):
      group[key]["ms"] += 1e3 * seconds / steps
  for info in table.values():
    for group, key in ((cats, info.category), (phases, info.phase)):
      group[key]["flops"] += info.flops * info.executions
      group[key]["bytes"] += info.bytes * info.executions
  step_ms = 1e3 * wall_s / steps
  busy = sum(c["ms"] for c in cats.values())
  for group in (cats, phases):
    for row in group.values():
      row["share"] = row["ms"] / step_ms
      row["floor_compute_ms"] = 1e3 * row["flops"] / peak_flops if peak_flops else None
      row["floor_memory_ms"] = 1e3 * row["bytes"] / bandwidth if bandwidth else None
  return {"step_ms": step_ms, "busy_ms": busy, "idle_ms": step_ms - busy,
          "categories": cats, "phases": phases,
          "top_ops": sorted(((op, 1e3 * s / steps, table[op].category if op in table else "unattributed")
                             for op, s in times.items()), key=lambda r: -r[1])[:15]}


def markdown(result: dict) -> str:
  """The breakdown as the table docs/benchmarks.md shows."""
  def fmt(x):
    return "—" if x is None else f"{x:.2f}"
  lines = [f"step {result['step_ms']:.2f} ms, ops busy {result['busy_ms']:.2f} ms, "
           f"idle/launch gaps {result['idle_ms']:.2f} ms", "",
           "| part | ms/step | share | GFLOP | floor: compute ms | floor: memory ms |",
           "|---|---|---|---|---|---|"]
  for title, group in (("", result["categories"]), ("phase: ", result["phases"])):
    for name, row in group.items():
      if row["ms"] or row["flops"]:
        lines.append(f"| {title}{name} | {row['ms']:.2f} | {100 * row['share']:.1f}% | "
                     f"{row['flops'] / 1e9:.1f} | {fmt(row['floor_compute_ms'])} | "
                     f"{fmt(row['floor_memory_ms'])} |")
  return "\n".join(lines) + "\n"
