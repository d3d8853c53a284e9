# Stage 6: train every (target, arm, seed).
rule target:
    input:
        SPEC,
        f"{STUDY}/transfer/done.json",
    output:
        f"{STUDY}/target/runs.parquet",
    threads: workflow.cores
    shell:
        cpt("target")
