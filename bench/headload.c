/*
 * headload: a wrk-style closed-loop HTTP/1.1 load generator for HEAD requests.
 *
 * wrk 4.1 cannot benchmark HEAD: its parser waits for the Content-Length bytes a
 * HEAD response announces but never sends, so no request ever completes. This
 * tool does what `wrk -tT -cC -dD --latency` does for one URL, except that a
 * response ends at the blank line after its headers.
 *
 *   headload -t THREADS -c CONNECTIONS -d SECONDS [-H 'Name: value']... http://HOST:PORT/PATH
 *
 * Prints one JSON object: requests, duration_s, requests_per_s, errors (socket
 * errors and reconnects), non_2xx, and latency percentiles in microseconds.
 * Latencies of every completed request are kept and sorted (exact percentiles).
 *
 * Build: cc -O2 -pthread -o headload headload.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_HEADERS 16
#define BUFSIZE 16384

typedef struct {
    int fd;
    uint64_t started_ns;
    size_t sent;
    size_t held;
    char buf[BUFSIZE];
} conn_t;

typedef struct {
    int connections;
    uint64_t deadline_ns;
    uint64_t requests;
    uint64_t errors;
    uint64_t non_2xx;
    uint32_t *latencies;
    size_t latency_count;
    size_t latency_cap;
} worker_t;

static struct sockaddr_storage target;
static socklen_t target_len;
static char *request;
static size_t request_len;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void record(worker_t *w, uint64_t latency_ns) {
    if (w->latency_count == w->latency_cap) {
        w->latency_cap = w->latency_cap ? w->latency_cap * 2 : 65536;
        w->latencies = realloc(w->latencies, w->latency_cap * sizeof(uint32_t));
        if (!w->latencies) {
            perror("realloc");
            exit(1);
        }
    }
    uint64_t us = latency_ns / 1000;
    w->latencies[w->latency_count++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
}

static int open_conn(int epfd, conn_t *c) {
    int fd = socket(target.ss_family, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    if (connect(fd, (struct sockaddr *)&target, target_len) < 0) {
        close(fd);
        return -1;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->fd = fd;
    c->sent = 0;
    c->held = 0;
    c->started_ns = now_ns();
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
}

static void reopen(int epfd, conn_t *c, worker_t *w) {
    w->errors++;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    if (now_ns() < w->deadline_ns && open_conn(epfd, c) < 0) c->fd = -1;
}

static void want(int epfd, conn_t *c, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void *run_worker(void *arg) {
    worker_t *w = arg;
    int epfd = epoll_create1(0);
    conn_t *conns = calloc((size_t)w->connections, sizeof(conn_t));
    for (int i = 0; i < w->connections; i++) {
        if (open_conn(epfd, &conns[i]) < 0) {
            conns[i].fd = -1;
            w->errors++;
        }
    }
    struct epoll_event events[256];
    for (;;) {
        uint64_t now = now_ns();
        if (now >= w->deadline_ns) break;
        int timeout_ms = (int)((w->deadline_ns - now) / 1000000ULL) + 1;
        int n = epoll_wait(epfd, events, 256, timeout_ms);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("epoll_wait");
            break;
        }
        for (int i = 0; i < n; i++) {
            conn_t *c = events[i].data.ptr;
            if (events[i].events & EPOLLOUT) {
                ssize_t k = write(c->fd, request + c->sent, request_len - c->sent);
                if (k < 0) {
                    if (errno != EAGAIN) reopen(epfd, c, w);
                    continue;
                }
                c->sent += (size_t)k;
                if (c->sent == request_len) want(epfd, c, EPOLLIN);
                continue;
            }
            if (events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                ssize_t k = read(c->fd, c->buf + c->held, BUFSIZE - 1 - c->held);
                if (k <= 0) {
                    if (k < 0 && errno == EAGAIN) continue;
                    reopen(epfd, c, w);
                    continue;
                }
                c->held += (size_t)k;
                c->buf[c->held] = '\0';
                char *end = strstr(c->buf, "\r\n\r\n");
                if (!end) {
                    if (c->held >= BUFSIZE - 1) reopen(epfd, c, w); /* headers too large */
                    continue;
                }
                uint64_t done = now_ns();
                if (done > w->deadline_ns) continue; /* finished after the run ended: not counted */
                int status = 0;
                if (strncmp(c->buf, "HTTP/1.", 7) == 0) status = atoi(c->buf + 9);
                if (status < 200 || status > 299) w->non_2xx++;
                w->requests++;
                record(w, done - c->started_ns);
                *end = '\0';
                int closing = strcasestr(c->buf, "\r\nconnection: close") != NULL;
                size_t used = (size_t)(end + 4 - c->buf);
                memmove(c->buf, end + 4, c->held - used);
                c->held -= used;
                if (closing) { /* the server ends keep-alive here (nginx after 1000 requests): reconnect */
                    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
                    close(c->fd);
                    if (open_conn(epfd, c) < 0) {
                        c->fd = -1;
                        w->errors++;
                    }
                    continue;
                }
                c->sent = 0;
                c->started_ns = now_ns();
                want(epfd, c, EPOLLOUT);
            }
        }
    }
    for (int i = 0; i < w->connections; i++)
        if (conns[i].fd >= 0) close(conns[i].fd);
    free(conns);
    close(epfd);
    return NULL;
}

static int compare_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static uint32_t percentile(const uint32_t *sorted, size_t n, double p) {
    if (n == 0) return 0;
    size_t index = (size_t)(p / 100.0 * (double)n);
    if (index >= n) index = n - 1;
    return sorted[index];
}

static void usage(void) {
    fprintf(stderr, "usage: headload -t THREADS -c CONNECTIONS -d SECONDS [-H 'Name: value']... URL\n");
    exit(2);
}

int main(int argc, char **argv) {
    int threads = 2, connections = 64;
    double seconds = 8.0;
    const char *headers[MAX_HEADERS];
    int header_count = 0;
    const char *url = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-t") == 0 && i + 1 < argc) threads = atoi(argv[++i]);
        else if (strcmp(argv[i], "-c") == 0 && i + 1 < argc) connections = atoi(argv[++i]);
        else if (strcmp(argv[i], "-d") == 0 && i + 1 < argc) seconds = atof(argv[++i]);
        else if (strcmp(argv[i], "-H") == 0 && i + 1 < argc && header_count < MAX_HEADERS)
            headers[header_count++] = argv[++i];
        else if (argv[i][0] != '-' && !url) url = argv[i];
        else usage();
    }
    if (!url || threads < 1 || connections < threads || seconds <= 0) usage();
    if (strncmp(url, "http://", 7) != 0) usage();
    char hostport[256];
    const char *rest = url + 7;
    const char *slash = strchr(rest, '/');
    const char *path = slash ? slash : "/";
    size_t hp_len = slash ? (size_t)(slash - rest) : strlen(rest);
    if (hp_len >= sizeof(hostport)) usage();
    memcpy(hostport, rest, hp_len);
    hostport[hp_len] = '\0';
    char host[256];
    const char *port = "80";
    snprintf(host, sizeof(host), "%s", hostport);
    char *colon = strrchr(host, ':');
    if (colon) {
        *colon = '\0';
        port = colon + 1;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
    if (getaddrinfo(host, port, &hints, &res) != 0) {
        fprintf(stderr, "cannot resolve %s\n", hostport);
        return 1;
    }
    memcpy(&target, res->ai_addr, res->ai_addrlen);
    target_len = res->ai_addrlen;
    freeaddrinfo(res);

    size_t cap = strlen(path) + strlen(hostport) + 64;
    for (int i = 0; i < header_count; i++) cap += strlen(headers[i]) + 2;
    request = malloc(cap);
    int off = snprintf(request, cap, "HEAD %s HTTP/1.1\r\nHost: %s\r\n", path, hostport);
    for (int i = 0; i < header_count; i++) off += snprintf(request + off, cap - (size_t)off, "%s\r\n", headers[i]);
    off += snprintf(request + off, cap - (size_t)off, "\r\n");
    request_len = (size_t)off;

    worker_t *workers = calloc((size_t)threads, sizeof(worker_t));
    pthread_t *tids = calloc((size_t)threads, sizeof(pthread_t));
    uint64_t start = now_ns();
    uint64_t deadline = start + (uint64_t)(seconds * 1e9);
    for (int i = 0; i < threads; i++) {
        workers[i].connections = connections / threads + (i < connections % threads ? 1 : 0);
        workers[i].deadline_ns = deadline;
        pthread_create(&tids[i], NULL, run_worker, &workers[i]);
    }
    uint64_t requests = 0, errors = 0, non_2xx = 0;
    size_t total = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(tids[i], NULL);
        requests += workers[i].requests;
        errors += workers[i].errors;
        non_2xx += workers[i].non_2xx;
        total += workers[i].latency_count;
    }
    double elapsed = (double)(now_ns() - start) / 1e9;
    uint32_t *all = malloc((total ? total : 1) * sizeof(uint32_t));
    size_t at = 0;
    for (int i = 0; i < threads; i++) {
        if (workers[i].latency_count)
            memcpy(all + at, workers[i].latencies, workers[i].latency_count * sizeof(uint32_t));
        at += workers[i].latency_count;
        free(workers[i].latencies);
    }
    qsort(all, total, sizeof(uint32_t), compare_u32);
    printf("{\"requests\": %llu, \"duration_s\": %.3f, \"requests_per_s\": %.1f, \"errors\": %llu, "
           "\"non_2xx\": %llu, \"p50_us\": %u, \"p90_us\": %u, \"p99_us\": %u, \"max_us\": %u}\n",
           (unsigned long long)requests, elapsed, (double)requests / elapsed, (unsigned long long)errors,
           (unsigned long long)non_2xx, percentile(all, total, 50), percentile(all, total, 90),
           percentile(all, total, 99), total ? all[total - 1] : 0);
    free(all);
    return 0;
}
