"""ComfyUI's V3 node API (`comfy_api.latest`), for custom node packs written against it.

A V3 pack defines nodes as `io.ComfyNode` subclasses (`define_schema()` returning an `io.Schema`, a classmethod
`execute(**inputs)` returning an `io.NodeOutput`) and exports `comfy_entrypoint()`, which returns a `ComfyExtension`
whose `get_node_list()` names the classes. comfy-core runs them through an adapter (`v1_adapter`): each class becomes
a V1-style node class the registry and executor already run, reporting the V3 `/object_info` shape (`INFO_V3`).

Like the rest of `comfy_core.compat`, it is made importable as `comfy_api`, `comfy_api.latest` and ComfyUI 0.3.64's
versioned names (`comfy_api.v0_0_1`, `comfy_api.v0_0_2`) by `comfy_core.compat.install()`, and keeps no state.
"""
