# Stage 4: per-module search at the base model, from the global optimum (resumable: its
# state is saved after every round of trials).
rule search:
    input: after("search")
    output: done("search")
    threads: workflow.cores
    shell: cpt("search")
