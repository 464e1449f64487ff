"""SLURM command building and output parsing, on output captured from Slurm 22.05."""

from slurm_gateway.slurm import (
    JobInfo,
    confirms_marker,
    describe_job,
    format_walltime,
    job_marker_command,
    named_jobs_command,
    parse_max_array_size,
    parse_sacct,
    parse_sbatch_job_ids,
    parse_sbatch_output,
    parse_squeue,
    slurm_unreachable,
    squeue_command,
    walltime_seconds,
)

# user and submit time columns of an squeue line
TAIL = "|alice|2026-11-22T11:00:00\n"


def test_sbatch_job_id_with_and_without_cluster_name():
    assert parse_sbatch_output("4242\n") == "4242"
    assert parse_sbatch_output("4242;devcluster\n") == "4242"


def test_sbatch_without_job_id_is_an_error():
    try:
        parse_sbatch_output("sbatch: error: something\n")
    except ValueError as exc:
        assert "no job id" in str(exc)
    else:
        raise AssertionError("expected ValueError")


def test_squeue_asks_for_our_own_jobs_by_id_in_all_states():
    argv = squeue_command(["12", "9_1", "9_0", "100"], "/usr/bin/squeue")
    assert argv[0] == "/usr/bin/squeue"
    assert "--states=all" in argv and "--array" in argv
    assert "--jobs=9,12,100" in argv  # an array task by its array's id
    # A single unknown id would make squeue fail; asked for twice, it is left out quietly.
    assert "--jobs=7,7" in squeue_command(["7"])


def test_orphan_sweep_looks_at_named_jobs_of_the_gateways_users_only():
    argv = named_jobs_command(["dg-scheduler", "dg-worker"], ["alice", "bob"])
    assert "--name=dg-scheduler,dg-worker" in argv and "--users=alice,bob" in argv


def test_squeue_pending_reason_running_node_and_finished_states():
    out = "".join(
        line + TAIL
        for line in [
            "101|PENDING|Resources|||2026-11-22T12:00:00",
            "102|RUNNING|None|n1|0:05|2026-11-22T11:00:00",
            "103|OUT_OF_MEMORY|OutOfMemory|n2|0:12|2026-11-22T11:00:00",
            "104|PENDING|Nodes required for job are DOWN, DRAINED or reserved|||N/A",
            "garbage line",
        ]
    )
    jobs = parse_squeue(out)
    assert set(jobs) == {"101", "102", "103", "104"}
    assert jobs["101"].state == "PENDING" and jobs["101"].reason == "Resources"
    assert jobs["101"].start_time == "2026-11-22T12:00:00"
    assert jobs["102"].reason == "" and jobs["102"].nodes == "n1" and jobs["102"].is_active
    assert jobs["103"].is_terminal and not jobs["103"].is_active
    assert jobs["104"].reason.startswith("Nodes required") and jobs["104"].start_time == ""
    assert jobs["102"].user == "alice"


def test_squeue_prints_no_field_a_user_can_set():
    # Job name, comment, working directory and output path (%j %k %Z %o) hold a user's bytes.
    for argv in (squeue_command(["1"]), named_jobs_command(["dg-worker"], ["alice"])):
        fields = next(a for a in argv if a.startswith("--format=")).split("=", 1)[1]
        assert not {"%j", "%k", "%Z", "%o", "%e", "%O"} & set(fields.split("|"))


def test_squeue_row_is_either_exact_or_ignored():
    good = "102|RUNNING|None|n1|0:05|2026-11-22T11:00:00" + TAIL
    forged = [
        "103|FAILED|None|n1|0:05|2026-11-22T11:00:00|alice|2026-11-22T11:00:00|extra\n",
        "104|RUNNING|None|n1|0:05|2026-11-22T11:00:00|alice\n",
        "x105|RUNNING|None|n1|0:05|2026-11-22T11:00:00" + TAIL,
        "106|running|None|n1|0:05|2026-11-22T11:00:00" + TAIL,
    ]
    assert set(parse_squeue(good + "".join(forged))) == {"102"}


def test_marker_confirmed_only_by_the_exact_single_line():
    marker = "dask-gateway@/var/lib/slurm-gateway"
    assert confirms_marker(f"42|alice|{marker}\n", "42", "alice", marker)
    assert not confirms_marker(f"42|alice|{marker}x\n", "42", "alice", marker)
    assert not confirms_marker(f"42|bob|{marker}\n", "42", "alice", marker)
    # bob's comment "x\n42|alice|<marker>" on his own job 43, or a second line of any kind
    assert not confirms_marker(f"43|bob|x\n42|alice|{marker}\n", "42", "alice", marker)
    assert not confirms_marker(f"42|alice|{marker}\n42|alice|{marker}\n", "42", "alice", marker)
    assert not confirms_marker("", "42", "alice", marker)
    argv = job_marker_command("42_3", ["dg-scheduler", "dg-worker"], "/usr/bin/squeue")
    assert "--jobs=42_3" in argv and "--name=dg-scheduler,dg-worker" in argv


def test_sacct_final_states_exit_codes_and_cancelling_user():
    out = (
        "201|COMPLETED|0:0|n1|00:00:03|None\n"
        "202|CANCELLED by 1001|0:15|n3|00:00:09|None\n"
        "203|OUT_OF_MEMORY|0:125|n2|00:00:12|OutOfMemory\n"
        "204|FAILED|3:0|n1|00:00:01|NonZeroExitCode\n"
        "205|CANCELLED by 0|0:0|None assigned|00:00:00|Dependency\n"
    )
    jobs = parse_sacct(out)
    assert jobs["201"].state == "COMPLETED" and jobs["201"].accounted
    assert jobs["202"].state == "CANCELLED" and jobs["202"].cancelled_by == "1001"
    assert jobs["203"].exit_code == "0:125"
    assert jobs["204"].exit_code == "3:0" and jobs["204"].reason == "NonZeroExitCode"
    assert jobs["205"].nodes == ""


def test_describe_pending_and_finished_jobs():
    pending = JobInfo("7", state="PENDING", reason="JobHeldUser")
    assert describe_job("scheduler", pending) == "scheduler job 7 PENDING (reason: JobHeldUser)"
    oom = JobInfo("8", state="OUT_OF_MEMORY", exit_code="0:125", nodes="n1", elapsed="00:00:12")
    assert describe_job("scheduler", oom) == (
        "scheduler job 8 OUT_OF_MEMORY (exit 0:125) on n1 after 00:00:12"
    )


def test_merge_keeps_facts_the_newer_report_lacks():
    queued = JobInfo("9", state="RUNNING", nodes="n2", elapsed="0:30")
    accounted = JobInfo("9", state="FAILED", exit_code="1:0", accounted=True)
    merged = queued.merged(accounted)
    assert (merged.state, merged.nodes, merged.exit_code) == ("FAILED", "n2", "1:0")


def test_walltime_conversions():
    assert walltime_seconds("90") == 90 * 60
    assert walltime_seconds("2:30") == 150
    assert walltime_seconds("1:00:00") == 3600
    assert walltime_seconds("1-00:00:00") == 86400
    assert walltime_seconds("2-12") == 60 * 3600
    assert format_walltime(59) == "0-00:01:00"
    assert format_walltime(86400) == "1-00:00:00"
    assert format_walltime(3661) == "0-01:02:00"


def test_array_tasks_are_tracked_one_per_line():
    assert "--array" in squeue_command(["123_0"])
    jobs = parse_squeue(
        "123_0|RUNNING|None|n1|0:05|N/A" + TAIL + "123_1|PENDING|Resources|||N/A" + TAIL
    )
    assert set(jobs) == {"123_0", "123_1"} and jobs["123_1"].reason == "Resources"
    accounted = parse_sacct("123_0|CANCELLED by 1001|0:15|n1|00:00:09|None\n")
    assert accounted["123_0"].state == "CANCELLED"


def test_sbatch_ids_of_an_array_and_of_a_single_job():
    assert parse_sbatch_job_ids("77\n", 1) == ["77"]
    assert parse_sbatch_job_ids("77;devcluster\n", 3) == ["77_0", "77_1", "77_2"]


def test_max_array_size_from_scontrol_show_config():
    config = "MaxArraySize            = 1001\nMaxJobCount             = 10000\n"
    assert parse_max_array_size(config) == 1001
    assert parse_max_array_size("nothing here") is None


def test_unreachable_controller_is_told_apart_from_a_refused_job():
    assert slurm_unreachable(
        "sbatch: error: Batch job submission failed: Unable to contact slurm controller "
        "(connect failure)"
    )
    assert slurm_unreachable("squeue: error: slurm_receive_msg: Socket timed out on send/recv")
    assert not slurm_unreachable(
        "sbatch: error: Batch job submission failed: Requested node configuration is not available"
    )
