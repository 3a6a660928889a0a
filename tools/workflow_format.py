"""ComfyUI workflow files: build the UI format from a compact description, convert UI format to the API
prompt format. Both need `/object_info` (which inputs are widgets, in which order).

UI format (what users drag into ComfyUI): {"nodes": [{"id", "type", "inputs": [{"name", "type", "link"}],
"outputs": [{"name", "type", "links"}], "widgets_values": [...]}, ...], "links": [[id, from, slot, to, slot,
type], ...]}. Seed-like INT widgets carry an extra "control after generate" value right after them.
API format (POST /prompt): {"<id>": {"class_type": type, "inputs": {name: value | [from_id, slot]}}}.
"""

from __future__ import annotations

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
FRONTEND_ONLY = ("Note", "MarkdownNote")  # the front end's own nodes: not in /object_info, not in a prompt


def _inputs(info: dict) -> list[tuple[str, list]]:
    """(name, spec) of a node's inputs in the order the front end shows them (required, then optional)."""
    out = []
    for group in ("required", "optional"):
        specs = info["input"].get(group, {})
        order = info.get("input_order", {}).get(group, list(specs))
        out += [(name, specs[name]) for name in order if name in specs]
    return out


def is_widget(spec: list) -> bool:
    kind, opts = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    if opts.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def has_control_value(name: str, spec: list) -> bool:
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    control = opts.get("control_after_generate")  # the front end: unset → only seed and noise_seed have one
    return spec[0] == "INT" and bool(name in ("seed", "noise_seed") if control is None else control)


def to_api(workflow: dict, object_info: dict) -> dict:
    """UI-format workflow → API prompt; raises KeyError naming a node type ComfyUI does not know."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) in (2, 4) or node["type"] in FRONTEND_ONLY:  # muted / bypassed / no backend node
            continue
        if node["type"] not in object_info:
            raise KeyError(f"node type {node['type']!r} (node {node['id']}) is not installed")
        info = object_info[node["type"]]
        inputs, values = {}, list(node.get("widgets_values", []))
        linked = {i["name"]: i["link"] for i in node.get("inputs", []) if i.get("link") is not None}
        for name, spec in _inputs(info):
            if is_widget(spec):
                if not values:
                    break
                value = values.pop(0)
                if has_control_value(name, spec) and values:
                    values.pop(0)
                if name not in linked:
                    inputs[name] = value
            if name in linked:
                link = links[linked[name]]
                inputs[name] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def build(nodes: list[dict], object_info: dict) -> dict:
    """A UI-format workflow from [{"id", "type", "widgets": {name: value}, "links": {input: (from_id, slot)},
    "pos": (x, y)}] laid out as given."""
    links, ui_nodes = [], []
    by_id = {n["id"]: n for n in nodes}
    outputs = {n["id"]: [[] for _ in object_info[n["type"]]["output"]] for n in nodes}
    for n in nodes:
        for name, (src, slot) in n.get("links", {}).items():
            link_id = len(links) + 1
            links.append([link_id, src, slot, n["id"], name, object_info[by_id[src]["type"]]["output"][slot]])
            outputs[src][slot].append(link_id)
    for order, n in enumerate(nodes):
        info = object_info[n["type"]]
        widgets, inputs = [], []
        for name, spec in _inputs(info):
            link = next((lk for lk in links if lk[3] == n["id"] and lk[4] == name), None)
            if is_widget(spec):
                value = n.get("widgets", {}).get(name, _default(spec))
                widgets.append(value)
                if has_control_value(name, spec):
                    widgets.append("fixed")
                if link is not None:
                    inputs.append(
                        {
                            "name": name,
                            "type": spec[0] if isinstance(spec[0], str) else "COMBO",
                            "link": link[0],
                            "widget": {"name": name},
                        }
                    )
            elif link is not None or name in info["input"].get("required", {}):
                inputs.append({"name": name, "type": spec[0], "link": link[0] if link else None})
        ui_nodes.append(
            {
                "id": n["id"],
                "type": n["type"],
                "pos": list(n.get("pos", (100 + 320 * order, 100))),
                "size": list(n.get("size", (300, 120))),
                "flags": {},
                "order": order,
                "mode": 0,
                "inputs": inputs,
                "outputs": [
                    {"name": oname, "type": otype, "links": outputs[n["id"]][i], "slot_index": i}
                    for i, (oname, otype) in enumerate(zip(info["output_name"], info["output"]))
                ],
                "properties": {"Node name for S&R": n["type"]},
                "widgets_values": widgets,
            }
        )
    for link in links:  # input name → slot index
        dst = next(u for u in ui_nodes if u["id"] == link[3])
        link[4] = [i["name"] for i in dst["inputs"]].index(link[4])
    return {
        "last_node_id": max(n["id"] for n in nodes),
        "last_link_id": len(links),
        "nodes": ui_nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {},
        "version": 0.4,
    }


def _default(spec: list):
    kind, opts = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    if "default" in opts:
        return opts["default"]
    if isinstance(kind, list):
        return kind[0] if kind else None
    if kind == "COMBO":
        return (opts.get("options") or [None])[0]
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(kind)
