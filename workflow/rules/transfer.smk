# Stage 5: each (target, arm)'s resolved settings and run configs.
rule transfer:
    input:
        SPEC,
        f"{STUDY}/select/global.json",
        f"{STUDY}/search/best.json",
    output:
        f"{STUDY}/transfer/done.json",
    shell:
        cpt("transfer")
