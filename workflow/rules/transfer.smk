# Stage 5: each (target, arm)'s resolved settings and run configs.
rule transfer:
    input: after("transfer")
    output: done("transfer")
    shell: cpt("transfer")
