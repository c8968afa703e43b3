"""The merged OpenAPI document: public paths only, and no service's schema silently
replaced by another's of the same name."""

from __future__ import annotations

from gateway.openapi import merged_openapi


class _Specs:
    def __init__(self, specs: dict[str, dict | None]) -> None:
        self.specs = specs

    async def get_json(self, service: str, path: str, timeout: float) -> tuple[int, dict | None]:
        if self.specs.get(service) is None:
            raise TimeoutError
        return 200, self.specs[service]


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _op(schema: dict) -> dict:
    return {"responses": {"200": {"content": {"application/json": {"schema": schema}}}}}


async def test_a_schema_name_two_services_use_differently_is_split_and_refs_follow():
    catalog = {
        "paths": {"/catalog/today": {"get": _op(_ref("Item"))}},
        "components": {"schemas": {"Item": {"type": "string"}}},
    }
    orders = {
        "paths": {
            "/orders": {"get": _op({"type": "array", "items": _ref("Item")})},
            "/internal/orders": {"get": _op(_ref("Item"))},
            "/healthz": {"get": _op({})},
        },
        "components": {"schemas": {"Item": {"type": "object"}}},
    }
    doc = await merged_openapi(_Specs({"catalog": catalog, "orders": orders}))
    schemas = doc["components"]["schemas"]
    assert schemas["Item"] == {"type": "string"} and schemas["orders_Item"] == {"type": "object"}
    today = doc["paths"]["/api/v1/catalog/today"]["get"]
    mine = doc["paths"]["/api/v1/orders"]["get"]
    assert today["responses"]["200"]["content"]["application/json"]["schema"] == _ref("Item")
    assert mine["responses"]["200"]["content"]["application/json"]["schema"]["items"] == _ref(
        "orders_Item"
    )
    assert set(doc["paths"]) == {"/api/v1/catalog/today", "/api/v1/orders"}
    assert today["security"] == [] and mine["security"] == [{"bearer": []}]
    assert "application/problem+json" in mine["responses"]["default"]["content"]
    assert doc["x-unavailable"] == ["leaders", "settlement"]
