# Stage 3: the global optimum per parameterisation from the base-model grid.
rule select:
    input:
        SPEC,
        f"{STUDY}/sweep/runs.parquet",
    output:
        f"{STUDY}/select/global.json",
    shell:
        cpt("select")
