"""Run any transferlab command under spark-submit (YARN, Kubernetes, standalone), e.g.::

    spark-submit --master yarn --deploy-mode client examples/spark_submit.py \\
        featurize /shared/photos --backbone mobilenet_v2 --out /shared/features --engine spark

spark-submit starts the JVM with its own --master and --conf; transferlab's Spark engine then uses that session
(``--master`` on the command line is not needed). spark-submit runs a file, not ``-m transferlab``, hence this one.
"""

from transferlab.cli import main

if __name__ == "__main__":
    main()
