from med42ray.cluster import init_ray, ray_address


def test_address_precedence(monkeypatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_address(None) is None
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    assert ray_address(None) == "ray://head:10001"
    assert ray_address("auto") == "auto"


def test_init_is_shared_and_idempotent(ray_session) -> None:
    first = init_ray(num_cpus=2)
    second = init_ray(address="ray://unused:10001")  # already connected: no-op
    assert first["CPU"] == second["CPU"] == 2
    assert ray_session.is_initialized()
