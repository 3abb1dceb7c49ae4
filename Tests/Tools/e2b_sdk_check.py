"""Drives an Atelier manager with the unmodified E2B SDK (sync API).

Run by the integration tests with E2B_API_KEY, E2B_API_URL and E2B_SANDBOX_URL pointing at
the manager. Prints one line per check ("ok NAME" or "FAIL NAME: why"), then a JSON line of
timings ("timings {...}"); exits 1 if any check failed. A check that cannot run fails: none
is skipped.
"""

import asyncio
import io
import json
import os
import statistics
import sys
import time
import traceback

import httpx

from e2b import (
    AsyncSandbox,
    AuthenticationException,
    CommandExitException,
    FileNotFoundException,
    PtySize,
    RateLimitException,
    Sandbox,
    SandboxNotFoundException,
    SandboxQuery,
    TimeoutException,
)

failures = []
timings = {}


def check(name, condition, detail=""):
    if condition:
        print(f"ok {name}", flush=True)
    else:
        failures.append(name)
        print(f"FAIL {name}: {detail}", flush=True)


def expect_raises(name, exception, call):
    try:
        call()
    except exception as e:
        check(name, True)
        return e
    except Exception as e:  # the wrong exception is a failure, with what it was
        check(name, False, f"raised {type(e).__name__}: {e}")
        return None
    check(name, False, f"raised nothing, expected {exception.__name__}")
    return None


def commands(sbx):
    result = sbx.commands.run("echo hello; echo oops >&2")
    check("run.stdout", result.stdout == "hello\n", repr(result.stdout))
    check("run.stderr", result.stderr == "oops\n", repr(result.stderr))
    check("run.exit_code", result.exit_code == 0, repr(result.exit_code))
    error = expect_raises("run.exit3", CommandExitException, lambda: sbx.commands.run("exit 3"))
    check("run.exit3.code", error is not None and error.exit_code == 3, repr(error))
    wide = sbx.commands.run("echo $SANDBOX_WIDE")
    check("create.envs", wide.stdout == "yes\n", repr(wide.stdout))
    envs = sbx.commands.run("echo $GREETING", envs={"GREETING": "hi"})
    check("run.envs", envs.stdout == "hi\n", repr(envs.stdout))
    cwd = sbx.commands.run("pwd", cwd="/tmp")
    check("run.cwd", cwd.stdout == "/tmp\n", repr(cwd.stdout))
    root = sbx.commands.run("id -u", user="root")
    check("run.user_root", root.stdout == "0\n", repr(root.stdout))
    samples = []
    for _ in range(5):
        start = time.monotonic()
        sbx.commands.run("true")
        samples.append((time.monotonic() - start) * 1000)
    timings["run_true_p50_ms"] = round(statistics.median(samples), 1)
    # The same command through Atelier's own API, for the ratio (the key is an API token).
    url = f"{os.environ['E2B_API_URL']}/api/sandboxes/{sbx.sandbox_id}/exec"
    headers = {"Authorization": f"Bearer {os.environ['E2B_API_KEY']}"}
    samples = []
    with httpx.Client() as client:
        for _ in range(5):
            start = time.monotonic()
            client.post(url, json={"command": "true"}, headers=headers).raise_for_status()
            samples.append((time.monotonic() - start) * 1000)
    timings["atelier_exec_true_p50_ms"] = round(statistics.median(samples), 1)


def processes(sbx):
    sleeper = sbx.commands.run("sleep 60", background=True)
    listed = [process.pid for process in sbx.commands.list()]
    check("commands.list", sleeper.pid in listed, repr(listed))
    check("commands.kill", sbx.commands.kill(sleeper.pid) is True)
    error = expect_raises("background.killed", CommandExitException, lambda: sleeper.wait())
    check("background.killed.code", error is not None and error.exit_code == -1, repr(error))
    cat = sbx.commands.run("cat", background=True, stdin=True)
    sbx.commands.send_stdin(cat.pid, "typed\n")
    sbx.commands.close_stdin(cat.pid)
    check("stdin", cat.wait().stdout == "typed\n")
    waited = sbx.commands.run("sleep 0.2; echo late", background=True).wait()
    check("background.wait", waited.stdout == "late\n", repr(waited.stdout))
    expect_raises(
        "run.timeout", TimeoutException, lambda: sbx.commands.run("sleep 30", timeout=1)
    )


def files(sbx):
    sbx.files.write("/tmp/e2b/hello.txt", "hello from the SDK")
    text = sbx.files.read("/tmp/e2b/hello.txt")
    check("files.text", text == "hello from the SDK", repr(text))
    payload = bytes(range(256)) * 64
    sbx.files.write("/tmp/e2b/blob.bin", payload)
    check("files.bytes", bytes(sbx.files.read("/tmp/e2b/blob.bin", format="bytes")) == payload)
    sbx.files.write("/tmp/e2b/packed.txt", "squeezed " * 1000, gzip=True)
    packed = sbx.files.read("/tmp/e2b/packed.txt")
    check("files.gzip_upload", packed == "squeezed " * 1000, repr(packed[:40]))
    sbx.files.write("/tmp/e2b/raw.bin", io.BytesIO(payload))
    check("files.octet_stream", bytes(sbx.files.read("/tmp/e2b/raw.bin", format="bytes")) == payload)
    sbx.files.remove("/tmp/e2b/packed.txt")
    sbx.files.remove("/tmp/e2b/raw.bin")
    names = sorted(entry.name for entry in sbx.files.list("/tmp/e2b"))
    check("files.list", names == ["blob.bin", "hello.txt"], repr(names))
    check("files.exists", sbx.files.exists("/tmp/e2b/hello.txt"))
    check("files.exists_missing", not sbx.files.exists("/tmp/e2b/none.txt"))
    check("files.make_dir", sbx.files.make_dir("/tmp/e2b/folder") is True)
    check("files.make_dir_again", sbx.files.make_dir("/tmp/e2b/folder") is False)
    info = sbx.files.get_info("/tmp/e2b/folder")
    check("files.get_info", info.type.value == "dir", repr(info))
    sbx.files.write_files(
        [{"path": "/tmp/e2b/many/one.txt", "data": "1"}, {"path": "/tmp/e2b/many/two.txt", "data": "2"}]
    )
    check("files.write_files", sbx.files.read("/tmp/e2b/many/two.txt") == "2")
    moved = sbx.files.rename("/tmp/e2b/many/one.txt", "/tmp/e2b/many/uno.txt")
    check("files.rename", moved.path == "/tmp/e2b/many/uno.txt" and not sbx.files.exists(
        "/tmp/e2b/many/one.txt"), repr(moved))
    sbx.files.remove("/tmp/e2b/hello.txt")
    check("files.remove", not sbx.files.exists("/tmp/e2b/hello.txt"))
    expect_raises(
        "files.read_missing", FileNotFoundException, lambda: sbx.files.read("/tmp/e2b/none.txt")
    )


def pty(sbx):
    handle = sbx.pty.create(PtySize(rows=24, cols=80))
    sbx.pty.send_stdin(handle.pid, b"echo pty-$((40+2))\n")
    sbx.pty.resize(handle.pid, PtySize(rows=30, cols=100))
    sbx.pty.send_stdin(handle.pid, b"stty size; exit\n")
    output = bytearray()
    handle.wait(on_pty=lambda data: output.extend(data))
    text = output.decode(errors="replace")
    check("pty.echo", "pty-42" in text, repr(text))
    check("pty.resize", "30 100" in text, repr(text))
    other = sbx.pty.create(PtySize(rows=24, cols=80))
    check("pty.kill", sbx.pty.kill(other.pid) is True)
    expect_raises("pty.killed", CommandExitException, lambda: other.wait())


def watch(sbx):
    sbx.files.make_dir("/tmp/watched")
    handle = sbx.files.watch_dir("/tmp/watched")
    sbx.files.write("/tmp/watched/new.txt", "x")
    seen = []
    for _ in range(50):
        seen += [(event.name, event.type.value) for event in handle.get_new_events()]
        if ("new.txt", "create") in seen:
            break
        time.sleep(0.1)
    handle.stop()
    check("watch.create", ("new.txt", "create") in seen, repr(seen))
    sbx.files.make_dir("/tmp/watched/deep")
    handle = sbx.files.watch_dir("/tmp/watched", recursive=True)
    sbx.files.write("/tmp/watched/deep/inner.txt", "z")
    seen = []
    for _ in range(50):
        seen += [(event.name, event.type.value) for event in handle.get_new_events()]
        if ("deep/inner.txt", "create") in seen:
            break
        time.sleep(0.1)
    handle.stop()
    check("watch.recursive", ("deep/inner.txt", "create") in seen, repr(seen))
    asyncio.run(watch_async(sbx.sandbox_id))


async def watch_async(sandbox_id):
    """The async SDK: a command, and WatchDir as a stream."""
    sbx = await AsyncSandbox.connect(sandbox_id)
    result = await sbx.commands.run("echo async")
    check("async.run", result.stdout == "async\n", repr(result.stdout))
    seen = []
    handle = await sbx.files.watch_dir(
        "/tmp/watched", on_event=lambda event: seen.append((event.name, event.type.value))
    )
    await sbx.files.write("/tmp/watched/streamed.txt", "y")
    for _ in range(50):
        if ("streamed.txt", "create") in seen:
            break
        await asyncio.sleep(0.1)
    await handle.stop()
    check("async.watch_dir", ("streamed.txt", "create") in seen, repr(seen))


def lifecycle(sbx):
    metrics = sbx.get_metrics()
    check("metrics", len(metrics) == 1 and metrics[0].cpu_count >= 1, repr(metrics))
    check("pause", sbx.pause() is True)
    check("pause.again", sbx.pause() is False)
    state = Sandbox.get_info(sbx.sandbox_id).state.value
    check("paused.state", str(state) == "paused", repr(state))
    resumed = Sandbox.connect(sbx.sandbox_id)
    back = resumed.commands.run("echo back")
    check("connect.resumes", back.stdout == "back\n", repr(back.stdout))


def control_plane(sbx):
    info = Sandbox.get_info(sbx.sandbox_id)
    check("get_info.state", str(info.state.value) == "running", repr(info.state))
    listed = [item.sandbox_id for item in Sandbox.list().next_items()]
    check("list.contains", sbx.sandbox_id in listed, repr(listed))
    tagged = Sandbox.list(query=SandboxQuery(metadata={"suite": "e2b"})).next_items()
    check("list.metadata", [item.sandbox_id for item in tagged] == [sbx.sandbox_id])
    other = Sandbox.list(query=SandboxQuery(metadata={"suite": "other"})).next_items()
    check("list.metadata_other", other == [], repr(other))
    sbx.set_timeout(600)
    check("is_running", sbx.is_running())
    expect_raises(
        "get_info.bad_id", SandboxNotFoundException, lambda: Sandbox.get_info("nosuchsandbox1")
    )
    expect_raises(
        "connect.bad_id", SandboxNotFoundException, lambda: Sandbox.connect("nosuchsandbox1")
    )
    # The manager allows one sandbox: a second create is refused, not retried into a duplicate.
    expect_raises("create.over_limit", RateLimitException, lambda: Sandbox.create(timeout=60))
    running = [item.sandbox_id for item in Sandbox.list().next_items()]
    check("create.no_duplicate", running == [sbx.sandbox_id], repr(running))
    expect_raises(
        "bad_key",
        AuthenticationException,
        lambda: Sandbox.get_info(sbx.sandbox_id, api_key="not-a-key"),
    )


def main():
    start = time.monotonic()
    sbx = Sandbox.create(timeout=300, envs={"SANDBOX_WIDE": "yes"}, metadata={"suite": "e2b"})
    timings["create_ms"] = round((time.monotonic() - start) * 1000, 1)
    check("create", bool(sbx.sandbox_id))
    try:
        for part in (commands, processes, files, pty, watch, lifecycle, control_plane):
            try:
                part(sbx)
            except Exception:
                check(part.__name__, False, traceback.format_exc())
    finally:
        start = time.monotonic()
        check("kill", sbx.kill() is True)
        timings["kill_ms"] = round((time.monotonic() - start) * 1000, 1)
    check("killed.is_running", not sbx.is_running())
    expect_raises(
        "killed.get_info", SandboxNotFoundException, lambda: Sandbox.get_info(sbx.sandbox_id)
    )
    print("timings " + json.dumps(timings), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    for name in ("E2B_API_KEY", "E2B_API_URL", "E2B_SANDBOX_URL"):
        if not os.environ.get(name):
            print(f"FAIL setup: {name} is not set")
            sys.exit(1)
    sys.exit(main())
