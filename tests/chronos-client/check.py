"""Drives a Tugboat server with the real `chronos-python` client library (PyPI: chronos-python).

Usage: python3 check.py HOST:PORT [USER:PASSWORD]. With credentials, every call uses HTTP basic
auth, and a client without them must be refused. Exits non-zero on the first failed check and prints one line
per check. Both API prefixes are exercised (the client's `v1` default and no prefix).
"""
import sys
import time

import chronos

server = sys.argv[1]
creds = {}
if len(sys.argv) > 2:
    user, password = sys.argv[2].split(":", 1)
    creds = {"username": user, "password": password}
checks = 0


def check(cond, what):
    global checks
    checks += 1
    if not cond:
        print("FAIL:", what)
        sys.exit(1)
    print("ok:", what)


for version in ("v1", None):
    c = chronos.connect([server], scheduler_api_version=version, **creds)
    tag = version or "root"
    parent = {
        "name": "py-parent-" + tag,
        "command": "echo parent",
        "schedule": "R/2030-01-01T00:00:00Z/PT24H",
        "epsilon": "PT30S",
        "owner": "ops@example.com",
        "async": False,
        "disabled": False,
    }
    child = {"name": "py-child-" + tag, "command": "echo child", "parents": [parent["name"]],
             "owner": "ops@example.com", "async": False, "disabled": False}
    c.add(parent)
    c.add(child)
    names = [j["name"] for j in c.list()]
    check(parent["name"] in names and child["name"] in names, tag + ": add scheduled and dependent jobs, list them")
    got = [j for j in c.list() if j["name"] == child["name"]][0]
    check(got["parents"] == [parent["name"]], tag + ": the dependent job keeps its parents")
    found = c.search(name=parent["name"])
    check([j["name"] for j in found] == [parent["name"]], tag + ": search by name")
    parent["command"] = "echo parent v2"
    c.update(parent)
    got = [j for j in c.list() if j["name"] == parent["name"]][0]
    check(got["command"] == "echo parent v2", tag + ": update")
    c.run(parent["name"])
    deadline = time.time() + 20
    stat = None
    while time.time() < deadline:
        got = {j["name"]: j for j in c.list()}
        if got[parent["name"]]["successCount"] >= 1 and got[child["name"]]["successCount"] >= 1:
            break
        time.sleep(0.2)
    check(got[parent["name"]]["successCount"] >= 1, tag + ": run now succeeds")
    check(got[child["name"]]["successCount"] >= 1, tag + ": the dependent job runs after its parent")
    stat = c.job_stat(parent["name"])
    check(isinstance(stat, dict), tag + ": job stat")
    check("," in c.scheduler_graph() or c.scheduler_graph() is not None, tag + ": graph csv")
    c.scheduler_stat_99th()
    c.scheduler_stat_median()
    c.delete_tasks(parent["name"])
    check(True, tag + ": kill tasks")
    c.delete(child["name"])
    c.delete(parent["name"])
    names = [j["name"] for j in c.list()]
    check(parent["name"] not in names and child["name"] not in names, tag + ": delete")

metrics = chronos.connect([server], **creds).metrics()
check("tug_fires" in str(metrics), "metrics through the client")
if creds:
    refused = False
    try:
        chronos.connect([server]).list()
    except chronos.ChronosAPIError:  # the client reports a 401 as no server left to try
        refused = True
    check(refused, "a client without credentials is refused")
    refused = False
    try:
        chronos.connect([server], username=creds["username"], password="wrong").list()
    except chronos.ChronosAPIError:  # the client reports a 401 as no server left to try
        refused = True
    check(refused, "a wrong password is refused")
print("%d passed, 0 failed" % checks)
