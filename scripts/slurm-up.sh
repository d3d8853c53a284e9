#!/usr/bin/env bash
# A single-node SLURM cluster on localhost, for the tests and for trying profiles/slurm on one
# machine. Debian/Ubuntu, run as root, no systemd needed. Idempotent: daemons already running
# are left alone. Stop it with scripts/slurm-down.sh.
#
#   scripts/slurm-up.sh            # install slurmctld, slurmd, munge if missing; start them
#   WITH_DBD=1 scripts/slurm-up.sh # also slurmdbd + MariaDB, so that `sacct` works
#
# The partition is `debug` (the default); the node is `localhost` with every CPU and all memory
# but 2 GiB. No GPUs: multi-task jobs train with torch.distributed's gloo backend.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
WITH_DBD=${WITH_DBD:-0}
LOG_DIR=/var/log/slurm

die() { echo "slurm-up: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts daemons)"

need=()
command -v slurmctld >/dev/null || need+=(slurmctld)
command -v slurmd >/dev/null || need+=(slurmd)
command -v sbatch >/dev/null || need+=(slurm-client)
command -v munged >/dev/null || need+=(munge)
if [ "$WITH_DBD" = 1 ]; then
  command -v slurmdbd >/dev/null || need+=(slurmdbd)
  command -v mariadbd >/dev/null || need+=(mariadb-server)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "slurm-up: installing ${need[*]}"
  command -v apt-get >/dev/null || die "no apt-get: install ${need[*]} yourself"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOG_DIR" /run/munge
chown munge:munge /run/munge

# munge authenticates every message between the daemons and the client commands.
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --force 2>/dev/null || /usr/sbin/create-munge-key -f
fi
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
munge -n | unmunge >/dev/null || die "munge does not work (see /var/log/munge/munged.log)"

if [ "$WITH_DBD" = 1 ]; then
  ACCOUNTING="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux"
else
  ACCOUNTING="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 - 2048 ))
# Notes on the choices below:
# - the machine's hostname need not resolve, so the node is called localhost (slurmd -N);
# - DefMemPerCPU: without it a job asks for all the node's memory and jobs run one at a time;
# - zero scheduler delays: a job starts about a second after sbatch;
# - MinJobAge: finished jobs stay visible to `squeue --states=all` for 5 minutes;
# - KillWait: seconds between SIGTERM and SIGKILL when a job is cancelled or requeued.
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=local
SlurmctldHost=localhost
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,sched_interval=2,bf_interval=1
ReturnToService=2
MinJobAge=300
KillWait=30
JobCompType=jobcomp/none
$ACCOUNTING
NodeName=localhost NodeHostname=localhost CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF

if [ "$WITH_DBD" = 1 ]; then
  mkdir -p /run/mysqld
  chown mysql:mysql /run/mysqld
  if ! pgrep -x mariadbd >/dev/null; then
    setsid /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 \
      >"$LOG_DIR/mariadb.log" 2>&1 </dev/null &
    for _ in $(seq 100); do mariadb -e 'select 1' >/dev/null 2>&1 && break; sleep 0.2; done
  fi
  mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
              CREATE DATABASE IF NOT EXISTS slurm_acct_db;
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  cat > /etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=$LOG_DIR/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
CONF
  chmod 600 /etc/slurm/slurmdbd.conf
  pgrep -x slurmdbd >/dev/null || /usr/sbin/slurmdbd
  for _ in $(seq 100); do sacctmgr -n show cluster >/dev/null 2>&1 && break; sleep 0.2; done
  sacctmgr -n show cluster format=cluster | grep -qw local || sacctmgr -i add cluster local >/dev/null
  sacctmgr -n show account format=account | grep -qw default \
    || sacctmgr -i add account default Description=default Organization=local >/dev/null
  sacctmgr -n show user format=user | grep -qw root \
    || sacctmgr -i add user root Account=default DefaultAccount=default >/dev/null
fi

pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld
pgrep -x slurmd >/dev/null || /usr/sbin/slurmd -N localhost
for _ in $(seq 100); do
  state=$(sinfo -h -n localhost -o %T 2>/dev/null || true)
  case "$state" in idle*|mixed*|allocated*) break ;; esac
  sleep 0.2
done
case "$state" in
  idle*|mixed*|allocated*) ;;
  *) die "the node did not come up (state: ${state:-none}); see $LOG_DIR/slurmctld.log and $LOG_DIR/slurmd.log" ;;
esac
sinfo
