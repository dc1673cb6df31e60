/*
 * kmx-vfio PCI_ADDR [BAR_INDEX]: proves a PCI device bound to vfio-pci is usable through the
 * VFIO group/container interface, the way a user-space driver (QEMU, DPDK) would use it.
 *
 * Each step prints one key=value line on stdout as it succeeds; the first failure prints
 * "error=<step>: <detail>" on stdout and stderr and exits with that step's own code, so a
 * test can tell from either the text or the exit status where it stopped. Built with
 * static (musl) by the image recipe: the guest has no libc, and busybox cannot issue ioctls.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <linux/vfio.h>

/* Exit codes: one per step, so a caller that only sees the status still knows the step. */
enum step {
	S_USAGE = 2,
	S_GROUP = 10,
	S_API,
	S_TYPE1,
	S_VIABLE,
	S_CONTAINER,
	S_DEVICE,
	S_REGIONS,
	S_BAR,
	S_MMAP,
	S_READBACK,
	S_DMA_MAP,
};

static const char *step_name(enum step s)
{
	switch (s) {
	case S_USAGE: return "usage";
	case S_GROUP: return "group";
	case S_API: return "api";
	case S_TYPE1: return "type1";
	case S_VIABLE: return "viable";
	case S_CONTAINER: return "container";
	case S_DEVICE: return "device";
	case S_REGIONS: return "regions";
	case S_BAR: return "bar";
	case S_MMAP: return "mmap";
	case S_READBACK: return "readback";
	case S_DMA_MAP: return "dma_map";
	}
	return "unknown";
}

/* The same line on both streams: the agent may keep only one of them. */
static void __attribute__((noreturn, format(printf, 2, 3))) fail(enum step s, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	printf("error=%s: %s\n", step_name(s), msg);
	fflush(stdout);
	fprintf(stderr, "error=%s: %s\n", step_name(s), msg);
	exit(s);
}

/* A failed syscall: its errno text, after what was being done. */
#define FAIL_ERRNO(s, fmt, ...) fail(s, fmt ": %s", ##__VA_ARGS__, strerror(errno))

#define DMA_IOVA 0x100000ULL
#define DMA_SIZE (1ULL << 20)

int main(int argc, char **argv)
{
	char path[PATH_MAX], link[PATH_MAX];
	const char *addr;
	char *end;
	long bar;
	ssize_t n;

	/* Line-buffered even into a pipe, so the lines before a crash are not lost. */
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc < 2 || argc > 3)
		fail(S_USAGE, "kmx-vfio PCI_ADDR [BAR_INDEX] (e.g. kmx-vfio 0000:01:00.0 2)");
	addr = argv[1];
	bar = 2;
	if (argc == 3) {
		errno = 0;
		bar = strtol(argv[2], &end, 10);
		if (errno || *end || end == argv[2] || bar < 0 || bar > VFIO_PCI_BAR5_REGION_INDEX)
			fail(S_USAGE, "BAR_INDEX %s is not 0..%d", argv[2], VFIO_PCI_BAR5_REGION_INDEX);
	}

	/* The group is the unit VFIO hands out: its number is the iommu_group link's name. */
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/iommu_group", addr);
	n = readlink(path, link, sizeof(link) - 1);
	if (n < 0)
		FAIL_ERRNO(S_GROUP, "%s", path);
	link[n] = '\0';
	const char *group = basename(link);
	printf("group=%s\n", group);

	int container = open("/dev/vfio/vfio", O_RDWR);
	if (container < 0)
		FAIL_ERRNO(S_API, "/dev/vfio/vfio");
	int api = ioctl(container, VFIO_GET_API_VERSION);
	if (api < 0)
		FAIL_ERRNO(S_API, "VFIO_GET_API_VERSION");
	if (api != VFIO_API_VERSION)
		fail(S_API, "kernel API version %d, this program speaks %d", api, VFIO_API_VERSION);
	printf("api=%d\n", api);

	/* Type1 is the IOMMU backend x86 uses; without it there is nothing to map DMA with. */
	int type1 = ioctl(container, VFIO_CHECK_EXTENSION, VFIO_TYPE1_IOMMU);
	if (type1 < 0)
		FAIL_ERRNO(S_TYPE1, "VFIO_CHECK_EXTENSION");
	if (type1 != 1)
		fail(S_TYPE1, "VFIO_TYPE1_IOMMU not supported (is vfio_iommu_type1 loaded?)");
	printf("type1=%d\n", type1);

	/* /dev/vfio/N exists only once a device of group N is bound to a VFIO driver. */
	snprintf(path, sizeof(path), "/dev/vfio/%s", group);
	int groupfd = open(path, O_RDWR);
	if (groupfd < 0)
		FAIL_ERRNO(S_VIABLE, "%s (is %s bound to vfio-pci?)", path, addr);
	struct vfio_group_status status = { .argsz = sizeof(status) };
	if (ioctl(groupfd, VFIO_GROUP_GET_STATUS, &status) < 0)
		FAIL_ERRNO(S_VIABLE, "VFIO_GROUP_GET_STATUS");
	/* Not viable: another device of the group is still on a host driver. */
	if (!(status.flags & VFIO_GROUP_FLAGS_VIABLE))
		fail(S_VIABLE, "group %s is not viable (bind every device in it to vfio-pci)", group);
	printf("viable=1\n");

	if (ioctl(groupfd, VFIO_GROUP_SET_CONTAINER, &container) < 0)
		FAIL_ERRNO(S_CONTAINER, "VFIO_GROUP_SET_CONTAINER");
	if (ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1_IOMMU) < 0)
		FAIL_ERRNO(S_CONTAINER, "VFIO_SET_IOMMU(TYPE1)");
	printf("container=ok\n");

	int device = ioctl(groupfd, VFIO_GROUP_GET_DEVICE_FD, addr);
	if (device < 0)
		FAIL_ERRNO(S_DEVICE, "VFIO_GROUP_GET_DEVICE_FD(%s)", addr);
	printf("device=ok\n");

	struct vfio_device_info info = { .argsz = sizeof(info) };
	if (ioctl(device, VFIO_DEVICE_GET_INFO, &info) < 0)
		FAIL_ERRNO(S_REGIONS, "VFIO_DEVICE_GET_INFO");
	if ((unsigned long)bar >= info.num_regions)
		fail(S_REGIONS, "device has %u regions, BAR %ld asked for", info.num_regions, bar);
	printf("regions=%u\n", info.num_regions);

	struct vfio_region_info reg = { .argsz = sizeof(reg), .index = (uint32_t)bar };
	if (ioctl(device, VFIO_DEVICE_GET_REGION_INFO, &reg) < 0)
		FAIL_ERRNO(S_BAR, "VFIO_DEVICE_GET_REGION_INFO(%ld)", bar);
	/* An unimplemented BAR reports size 0: nothing to test, and a caller asked for it. */
	if (reg.size == 0)
		fail(S_BAR, "BAR %ld is not implemented (size 0)", bar);
	printf("bar_size=%llu\n", (unsigned long long)reg.size);
	char flags[32] = "";
	if (reg.flags & VFIO_REGION_INFO_FLAG_READ)
		strcat(flags, ",read");
	if (reg.flags & VFIO_REGION_INFO_FLAG_WRITE)
		strcat(flags, ",write");
	if (reg.flags & VFIO_REGION_INFO_FLAG_MMAP)
		strcat(flags, ",mmap");
	printf("bar_flags=%s\n", flags[0] ? flags + 1 : "none");
	if (!(reg.flags & VFIO_REGION_INFO_FLAG_READ) || !(reg.flags & VFIO_REGION_INFO_FLAG_WRITE))
		fail(S_BAR, "BAR %ld is not readable and writable (flags 0x%x)", bar, reg.flags);

	/*
	 * Only an mmap-able BAR of at least a page is written to: that is memory (a GPU's VRAM,
	 * the ivshmem stub's shared RAM), where a pattern is harmless and is put back afterwards.
	 * A register or I/O BAR is left alone: writing it could set the device off.
	 */
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	if (!(reg.flags & VFIO_REGION_INFO_FLAG_MMAP) || reg.size < page) {
		printf("mmap=skipped\n");
		printf("readback=skipped\n");
	} else {
		uint8_t *saved = malloc(page), *seen = malloc(page), *pattern = malloc(page);
		if (!saved || !seen || !pattern)
			FAIL_ERRNO(S_MMAP, "malloc");
		for (size_t i = 0; i < page; i++)
			pattern[i] = (uint8_t)(i * 7 + 0x5a);
		uint8_t *map = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_SHARED, device,
				    (off_t)reg.offset);
		if (map == MAP_FAILED)
			FAIL_ERRNO(S_MMAP, "mmap BAR %ld", bar);
		memcpy(saved, map, page);
		memcpy(map, pattern, page);
		/* Order the writes before the read through the other path. */
		__sync_synchronize();
		printf("mmap=ok\n");
		/* pread goes through vfio-pci's own BAR accessors: a second path to the memory. */
		ssize_t got = pread(device, seen, page, (off_t)reg.offset);
		int err = errno;
		memcpy(map, saved, page);
		munmap(map, page);
		errno = err;
		if (got != (ssize_t)page)
			FAIL_ERRNO(S_READBACK, "pread BAR %ld returned %zd", bar, got);
		if (memcmp(seen, pattern, page) != 0) {
			size_t i = 0;
			while (seen[i] == pattern[i])
				i++;
			fail(S_READBACK, "byte %zu reads 0x%02x through pread, 0x%02x was written "
			     "through mmap", i, seen[i], pattern[i]);
		}
		printf("readback=ok\n");
	}

	/* The IOMMU side: pin and map a buffer for device DMA, then take it back. */
	void *buf = mmap(NULL, DMA_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED)
		FAIL_ERRNO(S_DMA_MAP, "mmap %llu bytes", DMA_SIZE);
	struct vfio_iommu_type1_dma_map dmap = {
		.argsz = sizeof(dmap),
		.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
		.vaddr = (uint64_t)(uintptr_t)buf,
		.iova = DMA_IOVA,
		.size = DMA_SIZE,
	};
	if (ioctl(container, VFIO_IOMMU_MAP_DMA, &dmap) < 0)
		FAIL_ERRNO(S_DMA_MAP, "VFIO_IOMMU_MAP_DMA iova 0x%llx", DMA_IOVA);
	struct vfio_iommu_type1_dma_unmap dunmap = {
		.argsz = sizeof(dunmap),
		.iova = DMA_IOVA,
		.size = DMA_SIZE,
	};
	if (ioctl(container, VFIO_IOMMU_UNMAP_DMA, &dunmap) < 0)
		FAIL_ERRNO(S_DMA_MAP, "VFIO_IOMMU_UNMAP_DMA iova 0x%llx", DMA_IOVA);
	/* The kernel reports how much it unmapped: less means the map was not whole. */
	if (dunmap.size != DMA_SIZE)
		fail(S_DMA_MAP, "unmapped %llu bytes, mapped %llu",
		     (unsigned long long)dunmap.size, DMA_SIZE);
	printf("dma_map=ok\n");

	close(device);
	close(groupfd);
	close(container);
	return 0;
}
