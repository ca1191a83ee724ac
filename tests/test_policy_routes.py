"""The policy over HTTP: validated before activation, versioned with history and rollback, kept across restarts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import policy
from tests.fakes.app import OWNER, app_client, owner_app


def _named(name: str) -> str:
    return policy.default_text().replace('version: "default-2025-06"', f'version: "{name}"', 1)


async def test_policy_put_validates_activates_versions_and_rolls_back(tmp_path: Path) -> None:
    async with app_client(owner_app(tmp_path)) as client:
        start = (await client.get("/policy", headers=OWNER)).json()
        refused = await client.get("/policy")
        broken = await client.put("/policy", headers=OWNER, content="schema: 1\nversion: x\nprofiles: [oops\n")
        after_broken = (await client.get("/policy", headers=OWNER)).json()
        first = await client.put("/policy", headers=OWNER, content=_named("owner-1"))
        second = await client.put("/policy", headers=OWNER, json={"text": _named("owner-2")})
        history = (await client.get("/policy/history", headers=OWNER)).json()["versions"]
        rolled = await client.post("/policy/rollback", headers=OWNER, json={"version": history[1]["version"]})
        missing = await client.post("/policy/rollback", headers=OWNER, json={"version": 999})
        now = (await client.get("/policy", headers=OWNER)).json()
    assert start["version"] == "default-2025-06" and "read_protected" in start["text"]
    assert refused.status_code == 401
    assert broken.status_code == 422 and broken.json()["problems"][0]["line"] is not None
    assert after_broken["sha256"] == start["sha256"]  # a bad policy never becomes active
    assert first.status_code == 200 and first.json()["version"] == "owner-1"
    assert second.status_code == 200 and second.json()["version"] == "owner-2"
    # The start-up text is the history's first version, so the owner can always go back to it.
    assert [v["name"] for v in history] == ["owner-2", "owner-1", "default-2025-06"] and history[0]["active"]
    assert rolled.status_code == 200 and rolled.json()["version"] == "owner-1"
    assert missing.status_code == 404
    assert now["version"] == "owner-1" and now["text"] == _named("owner-1")


async def test_policy_with_failing_examples_is_refused(tmp_path: Path) -> None:
    lying = _named("liar") + "  - {tool: Bash, input: {command: rm -rf /}, expect: allow}\n"
    async with app_client(owner_app(tmp_path)) as client:
        response = await client.put("/policy", headers=OWNER, content=lying)
        active = (await client.get("/policy", headers=OWNER)).json()
    assert response.status_code == 422 and "examples fail" in response.json()["problems"][0]["message"]
    assert active["version"] == "default-2025-06"


async def test_activated_policy_outlives_a_restart(tmp_path: Path) -> None:
    async with app_client(owner_app(tmp_path)) as client:
        assert (await client.put("/policy", headers=OWNER, content=_named("kept"))).status_code == 200
    async with app_client(owner_app(tmp_path)) as client:
        assert (await client.get("/policy", headers=OWNER)).json()["version"] == "kept"


async def test_rate_limits_of_an_activated_policy_apply_to_the_next_request(tmp_path: Path) -> None:
    strict = _named("strict").replace("commands_per_hour: 10", "commands_per_hour: 1", 1)
    assert "commands_per_hour: 1 " in strict
    body = {"prompt": "add /balance", "dry_run": True, "repo": str(tmp_path / "nowhere.git")}
    async with app_client(owner_app(tmp_path, commands=100)) as client:
        assert (await client.post("/agent/command", headers=OWNER, json=body)).status_code == 202
        assert (await client.put("/policy", headers=OWNER, content=strict)).status_code == 200
        refused = await client.post("/agent/command", headers=OWNER, json=body)
    assert refused.status_code == 429 and refused.json()["limit"] == "1 commands per hour"


async def test_a_malformed_policy_body_is_a_400_and_changes_nothing(tmp_path: Path) -> None:
    async with app_client(owner_app(tmp_path)) as client:
        start = (await client.get("/policy", headers=OWNER)).json()
        not_text = await client.put("/policy", headers=OWNER, json={"text": 5})
        no_text = await client.put("/policy", headers=OWNER, json={"yaml": _named("x")})
        not_utf8 = await client.put("/policy", headers=OWNER, content=b"version: \xff\n")
        history = (await client.get("/policy/history", headers=OWNER)).json()["versions"]
        now = (await client.get("/policy", headers=OWNER)).json()
    assert not_text.status_code == 400 and not_text.json()["error"].startswith("text: ")
    assert no_text.status_code == 400 and no_text.json()["error"] == "text: Field required"
    assert not_utf8.status_code == 400 and "YAML text" in not_utf8.json()["error"]
    assert now["sha256"] == start["sha256"] and len(history) <= 1


async def test_the_policy_file_is_history_until_the_owner_activates_a_version_and_start_up_says_which_is_used(
        tmp_path: Path) -> None:
    from policy.model import RateLimits
    from runner.app import create_app
    from tests.fakes.app import failing_runtime, owner_settings

    heard: list[str] = []
    file = tmp_path / "policy.yaml"

    def app_on(name: str) -> Any:
        file.write_text(_named(name))
        settings = owner_settings(tmp_path / "home", AGENT_RUNNER_REPO=str(tmp_path / "missing.git"),
                                  AGENT_RUNNER_POLICY=str(file))
        runtime = failing_runtime(settings, RateLimits(), start_policy=policy.load_file(file), say=heard.append)
        return create_app(settings, runtime=runtime, say=heard.append)

    async def history(client: Any) -> list[tuple[str, bool]]:
        versions = (await client.get("/policy/history", headers=OWNER)).json()["versions"]
        return [(v["name"], v["active"]) for v in versions]

    async with app_client(app_on("file-1")) as client:
        first = await history(client)
    async with app_client(app_on("file-1")) as client:  # the same file again: nothing new recorded
        same = await history(client)
    async with app_client(app_on("file-2")) as client:  # the operator edited the file: a new version, in use
        edited = await history(client)
        assert (await client.put("/policy", headers=OWNER, content=_named("owner"))).status_code == 200
    heard.clear()
    async with app_client(app_on("file-3")) as client:  # the owner's choice outlives an edited file, and says so
        kept = (await client.get("/policy", headers=OWNER)).json()["version"]
    assert first == [("file-1", True)] and same == first
    assert edited == [("file-2", True), ("file-1", False)]
    assert kept == "owner"
    [line] = [line for line in heard if line.startswith("policy: version")]
    assert "version 3 of the history is active (owner" in line and "the file's text differs" in line
    assert str(file) in line and "PUT /policy" in line
