# Stage 6: train every (target, arm, seed).
rule target:
    input: after("target")
    output: done("target")
    threads: workflow.cores
    shell: cpt("target")
