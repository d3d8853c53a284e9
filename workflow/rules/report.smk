# Stage 7: the report, from the study folder alone.
rule report:
    input: after("report")
    output: done("report")
    shell: cpt("report")
