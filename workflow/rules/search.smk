# Stage 4: per-module search at the base model, from the global optimum (resumable: its
# state is saved after every batch of trials).
rule search:
    input:
        SPEC,
        f"{STUDY}/select/global.json",
    output:
        f"{STUDY}/search/best.json",
    threads: workflow.cores
    shell:
        cpt("search")
