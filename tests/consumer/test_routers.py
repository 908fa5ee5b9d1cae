from __future__ import annotations

from polaris_sdk.consumer.routers import healthy, matches_metadata, metadata_key, route
from tests.consumer.helpers import make_instance


def test_metadata_key_is_order_independent_and_empty_for_none() -> None:
    assert metadata_key({"b": "2", "a": "1"}) == metadata_key({"a": "1", "b": "2"})
    assert metadata_key(None) == metadata_key({}) == ()


def test_healthy_excludes_unhealthy_isolated_and_zero_weight() -> None:
    assert healthy(make_instance(1))
    assert not healthy(make_instance(2, healthy=False))
    assert not healthy(make_instance(3, isolated=True))
    assert not healthy(make_instance(4, weight=0))


def test_metadata_match_needs_every_pair() -> None:
    inst = make_instance(1, metadata={"env": "prod", "zone": "a"})
    assert matches_metadata(inst, metadata_key({"env": "prod"}))
    assert matches_metadata(inst, metadata_key({"env": "prod", "zone": "a"}))
    assert not matches_metadata(inst, metadata_key({"env": "test"}))
    assert not matches_metadata(inst, metadata_key({"missing": "x"}))


def test_route_keeps_healthy_matching_instances_in_order() -> None:
    a = make_instance(1, metadata={"env": "prod"})
    b = make_instance(2, metadata={"env": "test"})
    c = make_instance(3, metadata={"env": "prod"}, healthy=False)
    d = make_instance(4, metadata={"env": "prod"})
    assert route((a, b, c, d)) == ((a, b, d), False)
    assert route((a, b, c, d), metadata_key({"env": "prod"})) == ((a, d), False)


def test_route_falls_back_to_every_instance_when_nothing_qualifies() -> None:
    sick = make_instance(1, healthy=False)
    isolated = make_instance(2, isolated=True)
    assert route((sick, isolated)) == ((sick, isolated), True)
    ok = make_instance(3, metadata={"env": "prod"})
    assert route((sick, ok), metadata_key({"env": "gray"})) == ((sick, ok), True)


def test_route_of_an_empty_service_is_empty_without_fallback() -> None:
    assert route(()) == ((), False)


def test_route_answers_the_same_tuple_when_nothing_is_filtered_out() -> None:
    instances = (make_instance(1, metadata={"env": "prod"}), make_instance(2))
    candidates, fallback = route(instances)
    assert candidates is instances and not fallback
    assert route(instances, metadata_key({"env": "prod"}))[0] == instances[:1]
