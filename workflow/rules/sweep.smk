# Stage 2: the global HP grid at the base model and the transfer sweeps along the axes.
rule sweep:
    input: after("sweep")
    output: done("sweep")
    threads: workflow.cores
    shell: cpt("sweep")
