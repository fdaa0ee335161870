/* Linked into every edgec TVM shared library (model.so): all cores by default.
 *
 * TVM's runtime sizes its thread pool, when it first starts, from TVM_NUM_THREADS, else
 * OMP_NUM_THREADS, else half the hardware threads (it assumes two per core): one thread on a
 * 2-core machine without SMT. When neither variable is set, this constructor sets TVM_NUM_THREADS
 * as the library is loaded: to EDGEC_THREADS (`edgec compile --threads N`, recorded in the
 * manifest) or, when that is 0, to the physical cores this process may run on. It takes effect
 * when the library is loaded before the pool has started (the first parallel kernel of the
 * process); edgec's own runner configures the pool explicitly (targets/tvm/threads.py).
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>

#ifndef EDGEC_THREADS
#define EDGEC_THREADS 0
#endif

/* Reads one integer from a sysfs file; -1 when it cannot. */
static long read_long(const char *path) {
    FILE *file = fopen(path, "r");
    long value = -1;
    if (file) {
        if (fscanf(file, "%ld", &value) != 1) value = -1;
        fclose(file);
    }
    return value;
}

/* Distinct (package, core) pairs among the CPUs this process may run on. */
static int physical_cores(void) {
    cpu_set_t allowed;
    long seen[CPU_SETSIZE][2];
    int count = 0;
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return 1;
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
        if (!CPU_ISSET(cpu, &allowed)) continue;
        char path[96];
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/topology/physical_package_id", cpu);
        long package = read_long(path);
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/topology/core_id", cpu);
        long core = read_long(path);
        if (package < 0 || core < 0) { package = -2; core = cpu; } /* no topology: count the CPU */
        int known = 0;
        for (int i = 0; i < count && !known; ++i) known = seen[i][0] == package && seen[i][1] == core;
        if (!known) { seen[count][0] = package; seen[count][1] = core; ++count; }
    }
    return count > 0 ? count : 1;
}

__attribute__((constructor)) static void edgec_default_threads(void) {
    if (getenv("TVM_NUM_THREADS") || getenv("OMP_NUM_THREADS")) return;
    char text[16];
    snprintf(text, sizeof text, "%d", EDGEC_THREADS > 0 ? EDGEC_THREADS : physical_cores());
    setenv("TVM_NUM_THREADS", text, 0);
}
