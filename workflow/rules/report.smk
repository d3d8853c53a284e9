# Stage 7: the report, from the study folder alone.
rule report:
    input:
        SPEC,
        f"{STUDY}/sweep/runs.parquet",
        f"{STUDY}/search/best.json",
        f"{STUDY}/target/runs.parquet",
    output:
        f"{STUDY}/report/report.md",
    shell:
        cpt("report")
