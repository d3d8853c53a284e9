# Stage 2: the global HP grid at the base model and the transfer sweeps along the axes.
rule sweep:
    input:
        SPEC,
        f"{STUDY}/check/verdict.json",
    output:
        f"{STUDY}/sweep/runs.parquet",
    threads: workflow.cores
    shell:
        cpt("sweep")
