# Stage 1: the coordinate check guards the study. A failing parameterisation stops the DAG
# here, with the plot's path in the error.
rule check:
    input: after("check")
    output: done("check")
    threads: workflow.cores
    shell: cpt("check")
