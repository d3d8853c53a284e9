# Stage 3: the global optimum per parameterisation from the base-model grid.
rule select:
    input: after("select")
    output: done("select")
    shell: cpt("select")
